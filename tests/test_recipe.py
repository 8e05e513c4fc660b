"""The GPT's recipe options (model.ModelArgs: rope, norm, qk_norm, mlp, zero_init_proj, tie_head) and the Muon
optimizer (optim.py): each changes the model as its comment says, rotary positions work wherever positions do
(the KV cache, packed documents, generation past block_size), the GPT-2 recipe is today's model, older
checkpoints load as the models they were, and a Muon run resumes bit for bit."""
import dataclasses
import io
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from configurator import UserError, parse
from conftest import ROOT, TINY_GPT, greedy, metrics, reference, without_timing
from model import GPT, KVCache, ModelArgs, gpt2_recipe
import sample
from slm import checkpoint, generation, optim, perf, training
import train


SMALL = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, pad_id=3)
MODERN = dict(rope=True, norm='rmsnorm', qk_norm=True, mlp='swiglu', zero_init_proj=True, tie_head=False)


def gpt(**overrides):
    torch.manual_seed(0)
    return GPT(ModelArgs(**{**gpt2_recipe(), **SMALL, **overrides})).eval()  # GPT-2's unless told otherwise


def scaled(model, factor=5.0):
    """The model with every weight multiplied by factor: outputs that depend on the context strongly enough
    for comparisons to mean something (and nothing left at zero-init's zeros)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p)).mul_(factor)
    return model


# ---------------------------------------------------------------------------------------------------------
# the GPT-2 recipe is the model as it was

# Recorded from model.py before the recipe options existed (main at a0c75c8): GPT(ModelArgs(**SMALL)) after
# torch.manual_seed(0), its logits for the last position's first 8 ids, for idx drawn after torch.manual_seed(1).
GPT2_KEYS = ['wte.weight', 'wpe.weight', *(f'blocks.{i}.{name}' for i in range(2) for name in (
    'ln_1.weight', 'attn.qkv.weight', 'attn.proj.weight', 'ln_2.weight', 'mlp.up.weight', 'mlp.down.weight')),
    'ln_f.weight', 'lm_head.weight']
GPT2_LOGITS = {
    False: [0.004301518201828003, -0.059398114681243896, 0.009800565429031849, 0.0, -0.07800611853599548,
            -0.018724137917160988, 0.03175695985555649, 0.04029932618141174, 0.07027877867221832,
            -0.09268271923065186, 0.042502161115407944, 0.0, 0.18994814157485962, 0.0025062195491045713,
            0.060807421803474426, -0.023509953171014786],
    True: [-0.11174875497817993, 0.04147403687238693, 0.014551839791238308, 0.0, -0.001454428886063397,
           0.041426628828048706, 0.053773440420627594, 0.06733621656894684, -0.03975165635347366,
           -0.009401671588420868, 0.05428889021277428, 0.0, 0.2757857143878937, -0.14425602555274963,
           0.024987267330288887, -0.013122130185365677]}
GPT2_SUMS = {False: (19.773300170898438, 80.25638580322266), True: (11.50149154663086, 78.12474060058594)}


@pytest.mark.parametrize('bias', [False, True])
def test_the_default_recipe_is_the_gpt2_model_as_it_was(bias):
    model = gpt(bias=bias)
    keys = list(model.state_dict())
    expected = GPT2_KEYS if not bias else [k for key in GPT2_KEYS for k in (
        [key, key.replace('weight', 'bias')] if key.startswith('blocks') or key == 'ln_f.weight' else [key])]
    assert keys == expected
    torch.manual_seed(1)
    idx = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        logits = model(idx)
    # The recorded values were computed on another CPU: its matrix kernels may round the last bit otherwise, so
    # to float32 precision, not bit for bit; any change to the computation (an op, an init draw) moves them by
    # orders of magnitude more. Bit for bit on one machine: see the old-checkpoint test below.
    torch.testing.assert_close(logits[:, -1, :8].flatten(), torch.tensor(GPT2_LOGITS[bias]), rtol=1e-5, atol=1e-7)
    total, absolute = GPT2_SUMS[bias]
    assert logits.sum().item() == pytest.approx(total, rel=1e-5)
    assert logits.abs().sum().item() == pytest.approx(absolute, rel=1e-5)


def test_a_checkpoint_saved_before_the_recipe_options_loads_as_the_model_it_was(tiny_checkpoint, tmp_path):
    trained = checkpoint.load(os.path.join(tiny_checkpoint, 'ckpt.pt'))  # its tokenizer; a GPT-2-recipe model
    args = ModelArgs(**{**trained['model_args'], **gpt2_recipe()})
    torch.manual_seed(0)
    ckpt = {'model_args': dataclasses.asdict(args), 'model': GPT(args).state_dict(), 'tokenizer': trained['tokenizer']}
    old = dict(ckpt)
    new_keys = {f.name for f in dataclasses.fields(ModelArgs)} - {
        'model_type', 'vocab_size', 'pad_id', 'block_size', 'n_layer', 'n_embd', 'n_head', 'n_hidden', 'dropout',
        'bias'}
    assert new_keys == set(gpt2_recipe()) and set(MODERN) < new_keys
    old['model_args'] = {k: v for k, v in ckpt['model_args'].items() if k not in new_keys}
    path = str(tmp_path / 'old.pt')
    checkpoint.save(path, old)
    loaded = checkpoint.load(path)
    assert loaded['model_args'] == ckpt['model_args']  # the options it lacked read as GPT-2's
    idx = torch.randint(0, ckpt['model_args']['vocab_size'], (2, 20))
    with torch.no_grad():
        assert torch.equal(checkpoint.restore_model(loaded).eval()(idx),
                           checkpoint.restore_model(ckpt).eval()(idx))


# ---------------------------------------------------------------------------------------------------------
# each option does what its comment says

def test_rope_replaces_the_position_table_with_relative_positions():
    learned, rotary = gpt(), gpt(rope=True)
    assert 'wpe.weight' not in rotary.state_dict() and not hasattr(rotary, 'wpe')
    assert sum(p.numel() for p in learned.parameters()) - sum(p.numel() for p in rotary.parameters()) == 16 * 16
    idx = torch.randint(0, 50, (2, 10))
    shifted = torch.arange(5, 15).expand(2, 10)  # every position 5 later: the same distances between them
    with torch.no_grad():
        assert torch.allclose(scaled(rotary)(idx), rotary(idx, positions=shifted), atol=1e-4)
        assert not torch.allclose(scaled(learned)(idx), learned(idx, positions=shifted), atol=1e-2)


def test_rope_with_a_kv_cache_equals_one_pass_over_the_whole_sequence():
    model = scaled(gpt(rope=True, qk_norm=True))
    idx = torch.randint(0, 50, (3, 16))
    with torch.no_grad():
        whole = model(idx)
        cache = KVCache(model.args)
        pieces = [model(idx[:, :5], cache), model(idx[:, 5:9], cache)] + [model(idx[:, i:i + 1], cache)
                                                                          for i in range(9, 16)]
    assert torch.allclose(torch.cat(pieces, dim=1), whole, atol=1e-4)


def test_rope_packed_document_computes_what_it_computes_alone():
    model = scaled(gpt(**MODERN))
    doc_a, doc_b = [1, 5, 6, 7, 8, 2], [1, 17, 23, 9, 2]
    idx = torch.tensor([doc_a + doc_b])
    doc_ids = torch.tensor([[0] * 6 + [1] * 5])
    positions = torch.tensor([list(range(6)) + list(range(5))])
    with torch.no_grad():
        packed = model(idx, positions=positions, doc_ids=doc_ids)
        assert torch.allclose(packed[:, 6:], model(torch.tensor([doc_b])), atol=1e-4)
        # positions that ran on instead of restarting: the same, as rotary attention only sees distances,
        # whereas without the document mask B would read A
        ran_on = model(idx, positions=torch.arange(11)[None], doc_ids=doc_ids)
        assert torch.allclose(ran_on[:, 6:], packed[:, 6:], atol=1e-4)
        assert not torch.allclose(model(idx)[:, 6:], packed[:, 6:], atol=1e-2)


@pytest.mark.parametrize('context_shift, shift', [(0.25, 4), (0.0, 0)])
def test_rope_generation_past_block_size_cached_equals_recomputed(context_shift, shift):
    torch.manual_seed(0)
    model = GPT(ModelArgs(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, **MODERN)).eval()
    scaled(model)
    ids = torch.tensor([[1, 17, 33, 42, 8]])
    cached = greedy(model, ids, 48, context_shift=context_shift)
    recomputed = greedy(model, ids, 48, use_cache=False, context_shift=context_shift)
    assert cached.tolist() == recomputed.tolist() == reference(model, ids, 48, shift)[:, 5:].tolist()
    assert len(set(cached[0].tolist())) >= 10  # not one token repeated


def test_rmsnorm_has_gains_only():
    model = gpt(norm='rmsnorm', bias=True)
    norms = [m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm))]
    assert len(norms) == 5 and all(isinstance(m, nn.RMSNorm) for m in norms)
    assert not any(name.startswith(('ln_', 'blocks.0.ln')) and name.endswith('bias')
                   for name, _ in model.named_parameters())
    x = torch.randn(2, 3, 16) * 4 + 7
    y = model.ln_f(x)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(2, 3), atol=1e-4)  # unit RMS, the mean not removed
    assert not torch.allclose(y.mean(-1), torch.zeros(2, 3), atol=1e-2)


def test_qk_norm_makes_attention_blind_to_the_scale_of_queries_and_keys():
    plain, normed = scaled(gpt()), scaled(gpt(qk_norm=True))
    idx = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        before = [m(idx) for m in (plain, normed)]
        for model in (plain, normed):
            for block in model.blocks:
                block.attn.qkv.weight[:32] *= 3.0  # the rows that make q and k (n_embd = 16 each)
        after = [m(idx) for m in (plain, normed)]
    assert torch.allclose(before[1], after[1], atol=1e-4)
    assert not torch.allclose(before[0], after[0], atol=1e-2)
    assert normed.blocks[0].attn.q_norm.weight.shape == (8,)  # a gain per channel of a head


@pytest.mark.parametrize('mlp, hidden, matrices', [('gelu', 64, 2), ('gelu_tanh', 64, 2), ('relu2', 64, 2),
                                                       ('swiglu', 48, 3)])
def test_mlp_activations(mlp, hidden, matrices):
    block = gpt(mlp=mlp).blocks[0].mlp
    assert block.down.weight.shape == (16, hidden)
    assert block.up.weight.shape == ((matrices - 1) * hidden, 16)
    x = torch.randn(2, 3, 16)
    h = x @ block.up.weight.T
    expected = {'gelu': lambda: nn.functional.gelu(h), 'gelu_tanh': lambda: 0.5 * h * (1 + torch.tanh(
                    (2 / torch.pi) ** 0.5 * (h + 0.044715 * h ** 3))), 'relu2': lambda: torch.relu(h) ** 2,
                'swiglu': lambda: nn.functional.silu(h[..., :hidden]) * h[..., hidden:]}[mlp]()
    with torch.no_grad():
        assert torch.allclose(block(x), expected @ block.down.weight.T, atol=1e-6)


def test_swiglu_flops_count_its_three_matrices():
    gelu, swiglu = gpt(), gpt(mlp='swiglu')
    per_layer = {name: perf.matmul_params(m) - perf.matmul_params(gpt(n_layer=1, mlp=m.args.mlp))
                 for name, m in (('gelu', gelu), ('swiglu', swiglu))}
    attention = 4 * 16 * 16
    assert per_layer['gelu'] == attention + 2 * 16 * 64
    assert per_layer['swiglu'] == attention + 3 * 16 * 48


def test_zero_init_proj_starts_every_block_as_the_identity():
    model = gpt(zero_init_proj=True, tie_head=False)
    for block in model.blocks:
        assert not block.attn.proj.weight.any() and not block.mlp.down.weight.any()
        assert block.attn.qkv.weight.std() > 0.01
    assert not model.lm_head.weight.any()
    assert torch.equal(model(torch.randint(0, 50, (2, 8))), torch.zeros(2, 8, 50))  # uniform first guesses
    tied = gpt(zero_init_proj=True)  # a tied head is the embedding: not zeroed
    assert tied.lm_head.weight.std() > 0.01


def test_untied_head_is_a_matrix_of_its_own():
    model = gpt(tie_head=False)
    assert model.lm_head.weight is not model.wte.weight
    assert sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in gpt().parameters()) == 50 * 16
    assert 'lm_head.weight' in model.state_dict()
    assert model.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.2)


def test_unknown_norm_or_mlp_is_refused():
    with pytest.raises(ValueError, match='unknown norm'):
        gpt(norm='batchnorm')
    with pytest.raises(UserError, match=r"--mlp=geglu must be gelu, gelu_tanh, relu2 or swiglu"):
        parse(training.TrainConfig, ['--mlp=geglu'])


# ---------------------------------------------------------------------------------------------------------
# Muon, and training with the options

def test_muon_is_in_this_torch():
    # the command docs/models.md gives to check an install
    done = subprocess.run([sys.executable, '-c', 'import torch.optim; print(torch.optim.Muon.__name__)'],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == 'Muon'


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    model = gpt(**MODERN)
    cfg = training.TrainConfig(optimizer='muon', learning_rate=1e-3, muon_lr=0.02)
    optimizer = optim.make_optimizer(model, cfg, 'cpu')
    muon, adamw = optimizer.optimizers['muon'], optimizer.optimizers['adamw']
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for g in muon.param_groups for p in g['params']}
    in_adamw = {id(p) for g in adamw.param_groups for p in g['params']}
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[i] for i in in_muon) == sorted(
        n for n, p in model.named_parameters() if n.startswith('blocks.') and p.dim() == 2)
    assert {names[i] for i in in_adamw} >= {'wte.weight', 'lm_head.weight', 'ln_f.weight'}
    assert not in_muon & in_adamw and len(in_muon | in_adamw) == len(list(model.parameters()))
    optim.set_learning_rate(optimizer, 5e-4)  # the schedule at half its peak: each optimizer at half its own
    assert [g['lr'] for g in optimizer.param_groups] == pytest.approx([0.01, 5e-4, 5e-4])
    with pytest.raises(UserError, match='--optimizer=muon is for the GPT'):
        training.check_config(training.TrainConfig(model_type='lstm', optimizer='muon'))


def test_the_modern_recipe_trains(char_data, tmp_path):
    out_dir = str(tmp_path / 'out')
    result = train.main([f'--data_dir={char_data}', *TINY_GPT, os.path.join(ROOT, 'config', 'recipe_modern.py'),
                         f'--out_dir={out_dir}', '--max_iters=60', '--eval_interval=60', '--learning_rate=3e-3'])
    evals = [r for r in metrics(out_dir) if 'val_loss' in r]
    assert evals[0]['val_loss'] > 3.5 and result['val_loss'] < evals[0]['val_loss'] - 0.8
    ckpt = checkpoint.load(os.path.join(out_dir, 'ckpt.pt'))
    assert {k: ckpt['model_args'][k] for k in MODERN} == MODERN and ckpt['config']['optimizer'] == 'muon'
    assert set(ckpt['optimizer']) == {'muon', 'adamw'}
    # sample.py needs nothing but the checkpoint; past block_size (32), with and without the cache alike
    drawn = [sample.sample(parse(generation.SampleConfig, [f'--out_dir={out_dir}', '--start=And God', '--seed=3',
                                                       '--max_new_tokens=80', f'--kv_cache={kv}']), io.StringIO())
             for kv in (True, False)]
    assert drawn[0] == drawn[1] and len(drawn[0][0]) == len('And God') + 80


def test_the_recipe_file_sets_every_option():
    cfg = parse(training.TrainConfig, [os.path.join(ROOT, 'config', 'recipe_modern.py')])
    assert {k: getattr(cfg, k) for k in MODERN} == MODERN and cfg.optimizer == 'muon'
    gpt2 = parse(training.TrainConfig, [os.path.join(ROOT, 'config', 'recipe_gpt2.py')])
    assert all(getattr(gpt2, k) == gpt2_recipe()[k] for k in MODERN) and gpt2.optimizer == 'adamw'
    # train.py's default: GPT-2's recipe with rotary positions and Muon (ablate.py's evidence, docs/models.md)
    default = training.TrainConfig()
    assert {k: getattr(default, k) for k in training.RECIPE} == {**gpt2_recipe(), 'rope': True, 'optimizer': 'auto',
                                                              'lr_schedule': 'cosine'}


def test_muon_resume_continues_exactly(char_data, tmp_path):
    common = [f'--data_dir={char_data}', '--eval_interval=10', '--dropout=0.1', '--lr_decay_iters=20',
              *TINY_GPT, *(f'--{k}={v}' for k, v in MODERN.items()), '--optimizer=muon']
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
    train.main([*common, f'--out_dir={straight}', '--max_iters=20'])
    train.main([*common, f'--out_dir={split}', '--max_iters=10'])
    train.main([*common, f'--out_dir={split}', '--max_iters=20', '--init_from=resume'])
    resumed, reference_ckpt = (torch.load(os.path.join(d, 'ckpt.pt'), weights_only=True) for d in (split, straight))
    assert without_timing(metrics(split)) == without_timing(metrics(straight))
    for name, tensor in reference_ckpt['model'].items():
        assert torch.equal(tensor, resumed['model'][name]), name
    buffers = [s['optimizer']['muon']['state'][0]['momentum_buffer'] for s in (reference_ckpt, resumed)]
    assert torch.equal(*buffers) and buffers[0].any()
    assert resumed['optimizer']['adamw']['state'][0]['step'] == 20
    with pytest.raises(UserError, match='was trained with --optimizer=muon: resume with that optimizer'):
        train.main([*common[:-1], f'--out_dir={split}', '--max_iters=30', '--init_from=resume'])


def test_rope_needs_an_even_head_size():
    with pytest.raises(UserError, match='n_embd / n_head = 5 must be even'):
        training.check_config(training.TrainConfig(n_embd=20, n_head=4, rope=True))
    training.check_config(training.TrainConfig(model_type='lstm', n_embd=20, n_head=4, rope=True))  # GPT only


def test_a_loss_scaler_steps_muon_and_adamw_together():
    # float16 training (CUDA) unscales and steps the optimizer through torch.amp.GradScaler: the same update as
    # the unscaled step, for both optimizers' parameters
    updated, options = [], dict(MODERN, zero_init_proj=False)  # zero projections: the first step moves the head only
    for scaler in (torch.amp.GradScaler('cpu', init_scale=1024.0), None):
        model = gpt(**options)
        optimizer = optim.make_optimizer(model, training.TrainConfig(optimizer='muon', adamw='for_loop'), 'cpu')
        torch.manual_seed(1)
        loss = model(torch.randint(0, 50, (2, 8))).logsumexp(-1).mean()
        if scaler:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        updated.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert updated[0].keys() == updated[1].keys()
    for name in updated[0]:
        assert torch.allclose(updated[0][name], updated[1][name], atol=1e-6), name
    before = dict(gpt(**options).named_parameters())
    for name in ('blocks.0.attn.qkv.weight', 'wte.weight'):  # one of Muon's, one of AdamW's: both stepped
        assert (updated[0][name] - before[name]).abs().max() > 1e-4, name


def test_resuming_with_the_default_optimizer_takes_the_checkpoints(char_data, tmp_path):
    # a run trained with AdamW (as every run was before the default became auto) resumes with train.py's default
    out_dir = str(tmp_path / 'out')
    args = [f'--data_dir={char_data}', f'--out_dir={out_dir}', *TINY_GPT, '--eval_interval=4']
    train.main([*args, '--max_iters=4'])
    auto = [a for a in args if a != '--optimizer=adamw']
    assert training.TrainConfig().optimizer == 'auto' and auto != args
    train.main([*auto, '--max_iters=8', '--init_from=resume'])
    ckpt = checkpoint.load(os.path.join(out_dir, 'ckpt.pt'))
    assert ckpt['iter_num'] == 8 and ckpt['config']['optimizer'] == 'adamw' and 'state' in ckpt['optimizer']



# ---------------------------------------------------------------------------------------------------------
# the speedrun's options (x0_mix, value_embed, smear, bigram, logit_softcap) and the warmdown schedule

SPEEDRUN = dict(x0_mix=True, value_embed=True, smear=True, bigram=True, ngram=4, logit_softcap=15.0)


@pytest.mark.parametrize('option, value', [('x0_mix', True), ('smear', True), ('bigram', True), ('ngram', 3),
                                           ('ngram', 4)])
def test_the_additive_options_start_as_the_model_without_them(option, value):
    """Mixes at (1, 0), a shut smear gate, bigram and n-gram tables at zero: the first step starts from the model
    without them (their weights drawn after the others', which are the same draws)."""
    idx = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        assert torch.equal(gpt(**{option: value})(idx), gpt()(idx))
    assert gpt(**{option: value}).state_dict().keys() > gpt().state_dict().keys()


def test_value_embeddings_sit_in_alternate_layers_from_the_last_with_their_gates_open():
    model = gpt(value_embed=True, n_layer=5)
    assert sorted(model.value_embeds) == ['0', '2', '4'] and sorted(model.value_gates) == ['0', '2', '4']
    assert not any(g.weight.any() for g in model.value_gates.values())  # 2 sigmoid(0) = 1: each head's gate
    assert [model.value_embeds[k].weight[SMALL['pad_id']].abs().sum().item() for k in model.value_embeds] == [0] * 3
    with torch.no_grad():
        assert not torch.allclose(model(torch.tensor([[1, 2, 4]])), gpt(n_layer=5)(torch.tensor([[1, 2, 4]])))


def test_bigram_table_is_exact_for_small_vocabularies_and_hashed_above():
    from model import bigram_rows
    assert bigram_rows(66) == 66 * 66 and bigram_rows(256) == 65536 and bigram_rows(4096) == 4 * 4096
    assert gpt(bigram=True).bigram_embed.num_embeddings == 50 * 50


def test_ngram_rows_are_the_ids_as_digits_modulo_a_prime_and_none_without_the_ids_before():
    from model import NGRAM_ROWS, ngram_rows, previous_tokens
    idx = torch.tensor([[5, 6, 7, 8, 9, 10]])
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]])  # two documents of three: nothing before either's start
    previous = previous_tokens(idx, None, positions, back=3)
    assert [p.tolist() for p in previous] == [[[-1, 5, 6, -1, 8, 9]], [[-1, -1, 5, -1, -1, 8]], [[-1] * 6]]
    trigram, fourgram = ngram_rows(previous, idx, 50)
    assert trigram.tolist() == [[-1, -1, (5 * 2500 + 6 * 50 + 7) % NGRAM_ROWS, -1, -1, 8 * 2500 + 9 * 50 + 10]]
    assert fourgram.tolist() == [[-1] * 6]
    four = ngram_rows(previous_tokens(idx, None, None, back=3), idx, 50)[1]  # one window, no documents
    assert four.tolist() == [[-1, -1, -1, (5 * 125000 + 6 * 2500 + 7 * 50 + 8) % NGRAM_ROWS,
                              (6 * 125000 + 7 * 2500 + 8 * 50 + 9) % NGRAM_ROWS,
                              (7 * 125000 + 8 * 2500 + 9 * 50 + 10) % NGRAM_ROWS]]
    model = gpt(ngram=4)
    assert [t.num_embeddings for t in model.ngram_embeds] == [NGRAM_ROWS, NGRAM_ROWS]


def test_logit_softcap_bounds_every_logit():
    idx = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        loud = scaled(gpt(), 20.0)(idx)
        capped = scaled(gpt(logit_softcap=15.0), 20.0)(idx)
    assert loud.abs().max() > 30 and capped.abs().max() <= 15
    torch.testing.assert_close(capped, 15.0 * torch.tanh(loud / 15.0))


def test_warmdown_holds_the_peak_then_falls_linearly_to_min_lr():
    cfg = training.TrainConfig(max_iters=100, warmup_iters=10, learning_rate=1e-2, min_lr=1e-3,
                               lr_schedule='warmdown', warmdown_frac=0.4)
    lrs = [optim.learning_rate(it, cfg) for it in range(101)]
    assert lrs[4] == pytest.approx(5e-3) and lrs[10] == lrs[59] == lrs[60] == 1e-2
    assert lrs[80] == pytest.approx(1e-2 - 0.5 * 9e-3) and lrs[100] == 1e-3
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    cosine = dataclasses.replace(cfg, lr_schedule='cosine')
    assert optim.learning_rate(60, cosine) < 1e-2  # the cosine falls from the first step after warmup


def test_the_speedrun_options_train_resume_bit_for_bit_and_sample(char_data, tmp_path):
    common = [f'--data_dir={char_data}', '--eval_interval=10', *TINY_GPT, '--rope=True', '--lr_schedule=warmdown',
              '--lr_decay_iters=40',
              '--learning_rate=3e-3', *(f'--{k}={v}' for k, v in SPEEDRUN.items())]
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
    result = train.main([*common, f'--out_dir={straight}', '--max_iters=40'])
    train.main([*common, f'--out_dir={split}', '--max_iters=20'])
    train.main([*common, f'--out_dir={split}', '--max_iters=40', '--init_from=resume'])
    evals = [r for r in metrics(straight) if 'val_loss' in r]
    assert result['val_loss'] < evals[0]['val_loss'] - 0.5
    assert without_timing(metrics(split)) == without_timing(metrics(straight))
    resumed, whole = (torch.load(os.path.join(d, 'ckpt.pt'), weights_only=True) for d in (split, straight))
    assert all(torch.equal(tensor, resumed['model'][name]) for name, tensor in whole['model'].items())
    assert {k: whole['model_args'][k] for k in SPEEDRUN} == SPEEDRUN
    assert whole['model']['x0_lambdas'].any() and whole['model']['smear_lambda'].any()  # they learned
    # past block_size (32), with the cache and without alike (the compiled step: tests/test_decode.py)
    drawn = [sample.sample(parse(generation.SampleConfig, [f'--out_dir={straight}', '--start=And God', '--seed=3',
                                                       '--max_new_tokens=80', f'--kv_cache={kv}']), io.StringIO())
             for kv in (True, False)]
    assert drawn[0] == drawn[1] and len(drawn[0][0]) == len('And God') + 80
