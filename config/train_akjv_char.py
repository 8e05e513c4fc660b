# GPT on the AKJV Bible, character level: about five minutes on 2 CPU cores.
# Prepare first: python prepare.py data/akjv_char
# On a GPU, scale up: n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2,
# max_iters=5000, compile=True.
data_dir = 'data/akjv_char'
out_dir = 'out-akjv-char'
model_type = 'gpt'
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
dropout = 0.0
batch_size = 32
max_iters = 1300
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 100
eval_interval = 260
eval_iters = 20
