# GPT on the Bach chorales as MIDI events: a few minutes on 2 CPU cores.
# Prepare first: python prepare.py data/bach    then: python sample.py --out_dir=out-bach --out=sample.mid
# A chorale is about 550 tokens (four voices: a chord and the shift after it take about 9), so block_size 128
# covers three to four bars. On a GPU, scale up: n_layer=6, n_head=6, n_embd=384, block_size=512,
# batch_size=64, dropout=0.2, max_iters=5000, and prepare with --transpose=5 for more data.
data_dir = 'data/bach'
out_dir = 'out-bach'
model_type = 'gpt'
n_layer = 4
n_head = 4
n_embd = 128
block_size = 128
dropout = 0.1
batch_size = 16
max_iters = 600
learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 60
eval_interval = 150
eval_tokens = 40960
