# LSTM on the AKJV Bible, word level, trained with truncated backpropagation through time:
# five minutes of wall clock, start-up included (max_time; --max_iters=900 trains 900 iterations instead).
# Prepare first: python prepare.py data/akjv
# On a GPU, scale up: n_layer=2, n_embd=650 (the classic "medium" word LSTM), block_size=35, batch_size=64,
# dropout=0.5, max_iters=10000.
data_dir = 'data/akjv'
out_dir = 'out-akjv-lstm'
model_type = 'lstm'
n_layer = 2
n_embd = 256
n_hidden = 0          # = n_embd, so the output layer shares the embedding matrix
block_size = 32       # steps of backpropagation through time
dropout = 0.1
batch_size = 32
max_time = '5min'
max_iters = 900       # with max_time: the schedule's shape (warmup_iters: the same share of the steps)
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 50
weight_decay = 0.01
eval_interval = 200
eval_tokens = 20480
