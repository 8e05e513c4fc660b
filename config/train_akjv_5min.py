# The best five-minute AKJV model found on a 2-core CPU: a GPT on the 4,096-id byte-level BPE learned from the
# training verses, 64 tokens of context (about 245 characters), packed windows (every verse read from its own <s>,
# attention inside it, as it is scored), value embeddings, the x0 mix and weight decay on Muon's matrices, 4 x 192,
# the training step compiled: 1.117 val bits/char, 3 seeds, one core each on the AMX Xeon, 2026-12-05 (1.151 at
# 4 x 128, eager). Five minutes of wall clock, start-up and compiling included (max_time). Chosen by ablate.py
# across the tokenizers (character, word, learned BPE of 1k-8k ids) and its options, scored in bits per character
# on the same held-out verses: docs/models.md, "The best five-minute model" and the passes after it. It is what
# make demo trains.
# Prepare first: python prepare.py data/akjv_bpe4k   (learns the BPE: a few seconds)
# No --bigram here: at 4,096 ids its table is hashed into 16,384 rows (2M parameters) that memorize the 1M
# training tokens, and the held-out score got worse.
data_dir = 'data/akjv_bpe4k'
out_dir = 'out-akjv-5min'
model_type = 'gpt'
n_layer = 4
n_head = 4
n_embd = 192          # compiled, 4 x 192 beat 4 x 128 (1.1171 vs 1.1327), 4 x 256 (1.1252) and 6 x 192 (1.1282)
block_size = 64
windowing = 'packed'  # every verse trained from its own start, attention inside it, as it is scored
value_embed = True
x0_mix = True
dropout = 0.0
batch_size = 32
max_time = '5min'
max_iters = 2000      # with max_time: the schedule's shape (warmup_iters is 10% of it: 10% of the steps)
learning_rate = 6e-3
muon_lr = 0.02
muon_weight_decay = 0.1
min_lr = 3e-4
warmup_iters = 200
eval_interval = 500
eval_tokens = 32768
compile = True        # the step's model and loss one graph: 1.5x (BPE) and 1.07x (char) the steps in five
#                       minutes on the AMX Xeon, its compiling included (docs/training-speed.md); eager,
#                       with a one-line warning, where torch cannot compile (no C++ compiler)
