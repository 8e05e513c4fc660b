# GPT on the AKJV Bible, word level: five minutes of wall clock on any machine, start-up included (max_time;
# --max_iters=600 on the command line trains the 600 iterations the schedule's shape is given in instead).
# Prepare first: python prepare.py data/akjv
# On a GPU, scale up: n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2,
# max_iters=5000, compile=True (bfloat16 autocast is picked automatically there).
data_dir = 'data/akjv'
out_dir = 'out-akjv'
model_type = 'gpt'
n_layer = 4
n_head = 4
n_embd = 128
block_size = 64
dropout = 0.1
batch_size = 32
max_time = '5min'
max_iters = 600       # with max_time: the schedule's shape (warmup_iters is 10% of it: 10% of the steps)
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 60
eval_interval = 150
eval_tokens = 40960
