# The modern GPT recipe, every change at once: layer it after a config to train that config's model this way,
#     python train.py config/train_akjv_char.py config/recipe_modern.py
# and override any one of them after it to leave it out (--optimizer=adamw, --rope=False, ...). train.py's
# defaults take the two changes that paid off at this project's sizes (rotary positions and Muon; docs/models.md,
# The GPT's recipe): the others, with them, did no better in two minutes on a CPU.
out_dir = 'out-modern'  # written beside the GPT-2 recipe's, not over it
rope = True
norm = 'rmsnorm'
qk_norm = True
mlp = 'swiglu'
zero_init_proj = True
tie_head = False
optimizer = 'muon'
muon_lr = 0.02
