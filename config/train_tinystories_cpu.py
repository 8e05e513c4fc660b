# GPT on TinyStories with GPT-2 BPE, sized for a CPU: 7.2M parameters, of which 6.4M are the tied
# 50,257 x 128 token embedding and the positions (the GPT-2 vocabulary dominates a model this small).
# Prepare a subset first: python prepare.py data/tinystories --max_docs=20000
# 16 x 128 = 2,048 tokens per iteration; 600 iterations read ~1.2M tokens, about a quarter of 20,000 stories.
# The GPU-sized model is config/train_tinystories.py.
data_dir = 'data/tinystories'
out_dir = 'out-tinystories-cpu'
model_type = 'gpt'
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
dropout = 0.0
batch_size = 16
max_iters = 600
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 50
eval_interval = 150
eval_iters = 10
log_interval = 10
device = 'cpu'
