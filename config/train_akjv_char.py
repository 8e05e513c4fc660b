# GPT on the AKJV Bible, character level: the lowest val bits/char we could reach in five minutes of wall clock
# (start-up included) on 2 CPU cores; see docs/results.md, Learning per minute, for the curve and what was tried.
# Prepare first: python prepare.py data/akjv_char
# On a GPU, scale up: n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, dropout=0.2,
# max_iters=5000 (train.py compiles on CUDA by default).
data_dir = 'data/akjv_char'
out_dir = 'out-akjv-char'
model_type = 'gpt'
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
dropout = 0.0
batch_size = 32
max_iters = 1000
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 100
eval_interval = 200
eval_tokens = 81920
