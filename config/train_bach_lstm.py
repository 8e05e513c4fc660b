# LSTM on the Bach chorales as MIDI events, truncated backpropagation through time: a few minutes on 2 CPU cores.
# Prepare first: python prepare.py data/bach    then: python sample.py --out_dir=out-bach-lstm --out=sample.mid
# The LSTM's state runs through whole chorales, so it is not limited to a window as the GPT is.
data_dir = 'data/bach'
out_dir = 'out-bach-lstm'
model_type = 'lstm'
n_layer = 2
n_embd = 256
n_hidden = 0          # = n_embd, so the output layer shares the embedding matrix
block_size = 64       # steps of backpropagation through time
dropout = 0.1
batch_size = 16
max_iters = 600
learning_rate = 3e-3
min_lr = 3e-4
warmup_iters = 50
weight_decay = 0.01
eval_interval = 150
eval_tokens = 20480
