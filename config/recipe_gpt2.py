# The GPT-2 recipe (2019): learned absolute positions, LayerNorm, the exact GELU, a head tied to the token
# embedding, AdamW for every weight. Layer it after a config to train that config's model this way,
#     python train.py config/train_akjv_char.py config/recipe_gpt2.py
# It is what every checkpoint saved before the recipe options means, and ablate.py's --what=recipe starts here.
out_dir = 'out-gpt2'  # written beside the default recipe's, not over it
rope = False
norm = 'layernorm'
qk_norm = False
mlp = 'gelu'
zero_init_proj = False
tie_head = True
optimizer = 'adamw'
x0_mix = False
value_embed = False
smear = False
bigram = False
ngram = 0
logit_softcap = 0.0
lr_schedule = 'cosine'
