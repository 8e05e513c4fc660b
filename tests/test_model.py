import pytest
import torch

from model import GPT, LSTM, KVCache, ModelArgs, build_model


def gpt(**overrides):
    torch.manual_seed(0)
    args = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, pad_id=3)
    return GPT(ModelArgs(**{**args, **overrides})).eval()


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


def test_gpt_with_a_kv_cache_equals_one_pass_over_the_whole_sequence():
    model = gpt()
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
