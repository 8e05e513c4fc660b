import pytest
import torch
import torch.nn.functional as F

from model import GPT, LSTM, KVCache, ModelArgs, attend, build_model, gpt2_recipe, ROPE_BASE, rotary_tables, rotate


def gpt(**overrides):
    torch.manual_seed(0)
    args = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, pad_id=3)
    return GPT(ModelArgs(**{**gpt2_recipe(), **args, **overrides})).eval()  # GPT-2's, as these tests were written


# the speedrun's options alone and together: each reads only what a cache or a document boundary allows
SPEEDRUN = {'gpt2': {}, 'x0_mix': {'x0_mix': True}, 'value_embed': {'value_embed': True}, 'smear': {'smear': True},
            'bigram': {'bigram': True}, 'trigram': {'ngram': 3}, 'fourgram': {'ngram': 4},
            'softcap': {'logit_softcap': 15.0},
            'all': {'rope': True, 'x0_mix': True, 'value_embed': True, 'smear': True, 'bigram': True, 'ngram': 4,
                    'logit_softcap': 15.0}}


def lively(**overrides):
    """gpt(**overrides) with what starts at zero or shut (mixes, gates, bigrams) drawn at random: at their
    initial values the options compute nothing, and a test of them would pass with none."""
    model = gpt(**overrides)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():  # scalars and gates of order 1, tables as large as the token embedding's
                p.normal_(0.0, 0.5 if p.dim() < 2 or p.size(1) != model.args.n_embd else 0.05)
    return model


def lstm(**overrides):
    torch.manual_seed(0)
    args = dict(model_type='lstm', vocab_size=50, n_layer=2, n_embd=16, pad_id=3)
    return LSTM(ModelArgs(**{**args, **overrides})).eval()


def test_gpt_logits_shape_and_tied_head():
    model = gpt()
    logits = model(torch.randint(0, 50, (3, 10)))
    assert logits.shape == (3, 10, 50)
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    assert torch.count_nonzero(model.wte.weight[3]) == 0  # the padding embedding starts at zero


def test_gpt_is_causal():
    model = gpt()
    idx = torch.randint(0, 50, (2, 12))
    changed = idx.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 50
    a, b = model(idx), model(changed)
    assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6)  # earlier positions cannot see later tokens
    assert not torch.allclose(a[:, 7:], b[:, 7:], atol=1e-3)


def test_gpt_refuses_context_longer_than_block_size():
    with pytest.raises(ValueError, match='longer than block_size'):
        gpt()(torch.zeros(1, 17, dtype=torch.long))


def test_lstm_shapes_and_hidden_state():
    model = lstm(n_hidden=24)
    h, c = model.init_hidden(4)
    assert h.shape == c.shape == (2, 4, 24) and not h.any()
    logits, (h, c) = model(torch.randint(0, 50, (4, 9)), (h, c))
    assert logits.shape == (4, 9, 50) and h.shape == (2, 4, 24)


def test_lstm_carried_state_equals_one_long_pass():
    model = lstm()
    idx = torch.randint(0, 50, (3, 20))
    whole, _ = model(idx, model.init_hidden(3))
    first, hidden = model(idx[:, :8], model.init_hidden(3))
    second, _ = model(idx[:, 8:], hidden)
    assert torch.allclose(torch.cat([first, second], dim=1), whole, atol=1e-5)


def test_lstm_ties_head_only_when_sizes_agree():
    tied, untied = lstm(), lstm(n_hidden=24)
    assert tied.head.weight is tied.embedding.weight
    assert untied.head.weight is not untied.embedding.weight


def test_build_model_by_type():
    assert isinstance(build_model(ModelArgs(vocab_size=10, n_embd=8, n_head=2)), GPT)
    assert isinstance(build_model(ModelArgs(model_type='lstm', vocab_size=10, n_embd=8)), LSTM)
    with pytest.raises(ValueError, match='unknown model_type'):
        build_model(ModelArgs(model_type='rnn', vocab_size=10))


def test_models_have_only_forward():
    for model in (gpt(), lstm()):
        public = {name for name in type(model).__dict__ if not name.startswith('_')}
        assert public <= {'forward', 'init_hidden'}


@pytest.mark.parametrize('options', SPEEDRUN)
def test_gpt_with_a_kv_cache_equals_one_pass_over_the_whole_sequence(options):
    model = lively(**SPEEDRUN[options])
    idx = torch.randint(0, 50, (3, 16))
    whole = model(idx)
    cache = KVCache(model.args)
    # a prompt from position 0, a chunk after it (queries that see the cache and each other), single tokens
    pieces = [model(idx[:, :5], cache), model(idx[:, 5:9], cache)] + [model(idx[:, i:i + 1], cache)
                                                                      for i in range(9, 16)]
    assert cache.length == 16 and tuple(cache.keys[1].shape) == (3, 2, 16, 8)
    assert torch.allclose(torch.cat(pieces, dim=1), whole, atol=1e-5)
    with pytest.raises(ValueError, match='17 tokens is longer than block_size 16'):
        model(idx[:, :1], cache)
    cache.reset()  # a new window from position 0 in the same buffers
    assert torch.allclose(model(idx[:, 3:11], cache), model(idx[:, 3:11]), atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# several documents in one row: packing and padding (batching.py's packed and lines windowings)

def packed_row(doc_a, doc_b):
    """One row holding doc_a then doc_b, with their doc_ids and positions restarting at doc_b."""
    idx = torch.tensor([doc_a + doc_b])
    doc_ids = torch.tensor([[0] * len(doc_a) + [1] * len(doc_b)])
    positions = torch.tensor([list(range(len(doc_a))) + list(range(len(doc_b)))])
    return idx, doc_ids, positions


@pytest.mark.parametrize('options', SPEEDRUN)
def test_gpt_packed_document_ignores_the_one_before_it(options):
    model = lively(**SPEEDRUN[options])
    doc_b = [1, 17, 23, 9, 2]
    idx, doc_ids, positions = packed_row([1, 5, 6, 7, 8, 2], doc_b)
    changed = idx.clone()
    changed[0, :6] = torch.tensor([1, 40, 41, 42, 43, 2])  # other tokens in document A
    logits = model(idx, positions=positions, doc_ids=doc_ids)
    other = model(changed, positions=positions, doc_ids=doc_ids)
    assert torch.equal(logits[:, 6:], other[:, 6:])  # document B's logits: not one bit changed
    assert not torch.allclose(logits[:, :6], other[:, :6], atol=1e-3)
    # and they are what B alone gives: attention and positions both restart at B's first token
    assert torch.allclose(logits[:, 6:], model(torch.tensor([doc_b])), atol=1e-5)
    # without the document mask and restarted positions, B would read A
    assert not torch.allclose(model(idx)[:, 6:], model(changed)[:, 6:], atol=1e-3)


@pytest.mark.parametrize('options', SPEEDRUN)
def test_gpt_left_padded_document_computes_what_it_computes_alone(options):
    model = lively(**SPEEDRUN[options])
    doc = [1, 17, 23, 9]
    idx = torch.tensor([[3, 3, 3] + doc])  # 3 = pad_id
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1]])
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3]])
    padded = model(idx, positions=positions, doc_ids=doc_ids)
    assert torch.allclose(padded[:, 3:], model(torch.tensor([doc])), atol=1e-5)


def test_gpt_default_positions_and_one_document_are_the_plain_causal_model():
    model = gpt()
    idx = torch.randint(0, 50, (2, 9))
    explicit = model(idx, positions=torch.arange(9).expand(2, 9), doc_ids=torch.zeros(2, 9, dtype=torch.long))
    assert torch.allclose(model(idx), explicit, atol=1e-6)


def test_gpt_refuses_document_ids_with_a_kv_cache():
    model, idx = gpt(), torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match='not for generation with a KV cache'):
        model(idx, KVCache(model.args), doc_ids=torch.zeros_like(idx))


def test_document_mask_is_block_diagonal_and_causal():
    from model import document_mask
    mask = document_mask(torch.tensor([[0, 0, 0, 1, 1]]))
    assert mask.shape == (1, 1, 5, 5)
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0, 0],
                                          [1, 1, 0, 0, 0],
                                          [1, 1, 1, 0, 0],
                                          [0, 0, 0, 1, 0],
                                          [0, 0, 0, 1, 1]]


def test_lstm_state_starts_afresh_where_a_position_is_zero():
    model = lstm()
    doc_b = [1, 17, 23, 9, 2]
    idx, _, positions = packed_row([1, 5, 6, 7, 8, 2], doc_b)
    carried = model.init_hidden(1)
    carried = tuple(torch.randn_like(h) for h in carried)  # a state left by some earlier batch
    logits, _ = model(idx, carried, positions=positions)
    alone, _ = model(torch.tensor([doc_b]), model.init_hidden(1))
    assert torch.allclose(logits[:, 6:], alone, atol=1e-5)  # B never reads A's state
    first, _ = model(idx[:, :6], model.init_hidden(1))
    assert torch.allclose(logits[:, :6], first, atol=1e-5)  # A starts at position 0: the carried state is reset
    # a row whose position 0 comes later keeps the carried state until then; rows reset independently
    two_rows = torch.cat([idx, idx.flip(1)])
    shifted = torch.stack([positions[0], torch.tensor([3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5])])
    both, (h, c) = model(two_rows, tuple(h.expand(-1, 2, -1).contiguous() for h in carried), positions=shifted)
    assert torch.allclose(both[:1], logits, atol=1e-5)
    plain, _ = model(two_rows[1:, :5], tuple(h.contiguous() for h in carried))
    assert torch.allclose(both[1:, :5], plain, atol=1e-5)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_rotate_gives_the_numbers_of_the_pairwise_formula_bit_for_bit(dtype):
    """rotate's four operations are (x1 cos - x2 sin, x2 cos + x1 sin) exactly, as checkpoints trained with the
    seven-operation form computed them: they sample the same."""
    args = ModelArgs(n_layer=1, n_head=4, n_embd=128, block_size=64, vocab_size=10)
    half = args.n_embd // args.n_head // 2
    angles = torch.arange(args.block_size)[:, None] * ROPE_BASE ** (-torch.arange(half) / half)
    cos, sin = rotary_tables(args)
    assert torch.equal(cos[:, :half], angles.cos()) and torch.equal(sin[:, half:], angles.sin())
    torch.manual_seed(0)
    x = (torch.randn(3, 4, args.block_size, 2 * half) * 10).to(dtype)
    x1, x2 = x.chunk(2, dim=-1)
    c, s = angles.cos().to(dtype), angles.sin().to(dtype)
    assert torch.equal(rotate(x, cos, sin), torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1))


def test_cpu_attention_runs_in_float32_under_bfloat16_autocast_and_returns_bfloat16():
    """On the CPU the attention of bfloat16 queries, keys and values is float32's (its bfloat16 kernels are the
    slow ones there), rounded back to bfloat16 for the projection; gradients reach all three inputs."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 16, 8).to(torch.bfloat16).requires_grad_() for _ in range(3))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = attend(q, k, v, None, True, 0.0)
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True).to(torch.bfloat16)
    assert y.dtype == torch.bfloat16 and torch.equal(y, expected)
    y.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.bfloat16 and t.grad.abs().sum() > 0 for t in (q, k, v))
    plain = torch.randn(2, 4, 16, 8)  # float32 is the plain call, bit for bit
    assert torch.equal(attend(plain, plain, plain, None, True, 0.0),
                       F.scaled_dot_product_attention(plain, plain, plain, is_causal=True))
