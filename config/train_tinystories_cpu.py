# GPT on TinyStories, sized for a CPU, with a byte-level BPE of 4,096 ids learned from the training stories.
# Prepare first (learns the vocabulary, then encodes): python prepare.py data/tinystories_bpe4k --max_docs=20000
# Why not GPT-2's 50,257 ids: in a model this small that vocabulary is the model (6.4M of 7.2M parameters) and
# most of each step is the 50,257-way output layer. Measured on 2026-12-01 on TinyStories-like generated stories
# (docs/tokenizers.md), 10 minutes each on one core: a learned vocabulary ran 9.7x the tokens/s of GPT-2's and
# reached 0.185 bits/char against 0.261. Here 4,096 ids (1.3M parameters), as the real stories' richer text wants.
# 8 x 128 = 1,024 tokens per iteration; 5,000 iterations read ~5M tokens (about a quarter of 20,000 stories): about
# 10 minutes on one core at the ~9,000 tokens/s a 4,096-id head ran at on the AKJV here (not run on the real
# TinyStories, which cannot be downloaded on the machines this was tuned on).
# GPT-2's vocabulary, as before: --data_dir=data/tinystories (then about 720 tokens/s: --max_iters=500).
# The GPU-sized model is config/train_tinystories.py.
data_dir = 'data/tinystories_bpe4k'
out_dir = 'out-tinystories-cpu'
model_type = 'gpt'
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
dropout = 0.0
batch_size = 8
max_iters = 5000
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 250
eval_interval = 1000
eval_tokens = 10240
log_interval = 50
device = 'cpu'
