# GPT on TinyStories with GPT-2 BPE, sized for a CPU: 7.2M parameters, of which 6.4M are the tied
# 50,257 x 128 token embedding and the positions (the GPT-2 vocabulary dominates a model this small).
# Prepare a subset first: python prepare.py data/tinystories --max_docs=20000
# 8 x 128 = 1,024 tokens per iteration; 500 iterations read ~0.5M tokens, about a fifth of 20,000 stories.
# Most of each step is the 50,257-way output layer, so even this small model is slow on a CPU: on 2 cores
# shared with other work, 500 iterations took 16 minutes with OMP_NUM_THREADS=1 (~720 tokens/s), 26 with
# torch's default threads.
# The GPU-sized model is config/train_tinystories.py.
data_dir = 'data/tinystories'
out_dir = 'out-tinystories-cpu'
model_type = 'gpt'
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
dropout = 0.0
batch_size = 8
max_iters = 500
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 50
eval_interval = 125
eval_tokens = 10240
log_interval = 10
device = 'cpu'
