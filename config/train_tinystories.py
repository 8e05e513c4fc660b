# GPT on TinyStories with GPT-2 BPE, sized for one GPU: 51.2M parameters (25.2M in the 8 transformer blocks,
# 26.0M in the tied 50,257 x 512 token embedding and the positions).
# Prepare first: python prepare.py data/tinystories            (all ~2.1M stories, ~470M tokens)
#            or: python prepare.py data/tinystories --max_docs=200000   (a subset, for data-size ablations)
# 64 x 512 = 32,768 tokens per iteration; 20,000 iterations are ~655M tokens, about 1.4 passes over the corpus.
# GPU notes: bfloat16 autocast is picked automatically where the GPU has it (else float16 with loss scaling);
# compile=True pays ~1 minute once and then runs markedly faster. Out of memory? Halve batch_size and set
# gradient_accumulation_steps=2: the same tokens per iteration, the same run. The 50,257-way output layer is
# the largest single tensor of a step: (batch_size, block_size, 50257) logits.
# On a CPU use config/train_tinystories_cpu.py instead.
data_dir = 'data/tinystories'
out_dir = 'out-tinystories'
model_type = 'gpt'
n_layer = 8
n_head = 8
n_embd = 512
block_size = 512
dropout = 0.0          # ~470M tokens of data: no need to regularize a model this size
batch_size = 64
gradient_accumulation_steps = 1
max_iters = 20000
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 1000
weight_decay = 0.1
beta2 = 0.95           # many tokens per step: a shorter second-moment memory is the usual GPT choice
eval_interval = 1000
eval_tokens = 3276800
log_interval = 50
compile = True
