"""decode.py's one-token step against GPT.forward with its KV cache: the same logits for every recipe, and the same
tokens from generation.generate eager, under torch.compile and compiled ahead of time (AOTInductor), past block_size."""
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, has_compiler
from model import GPT, KVCache, ModelArgs, gpt2_recipe, recipe_changes
from slm import decode, generation


BASE = ModelArgs(**gpt2_recipe(), vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
RECIPES = {
    'gpt2': BASE,
    # each change of model.py's recipe options alone: a new option the step does not compute fails here
    **{f'gpt2_{change}': dataclasses.replace(BASE, **{name: value})
       for change, (name, value) in recipe_changes().items()},
    'default': dataclasses.replace(BASE, rope=True),
    'modern': dataclasses.replace(BASE, rope=True, norm='rmsnorm', qk_norm=True, mlp='relu2', zero_init_proj=False,
                                  tie_head=False),
    'speedrun': dataclasses.replace(BASE, rope=True, x0_mix=True, value_embed=True, smear=True, bigram=True,
                                    ngram=4, logit_softcap=15.0),
    'modern_speedrun': dataclasses.replace(BASE, rope=True, norm='rmsnorm', qk_norm=True, mlp='relu2', tie_head=False,
                                           x0_mix=True, value_embed=True, smear=True, bigram=True, ngram=3,
                                           logit_softcap=15.0),
    'swiglu_bias': dataclasses.replace(BASE, mlp='swiglu', bias=True),
    'gelu_tanh_padding': dataclasses.replace(BASE, rope=True, mlp='gelu_tanh', pad_id=0),
}


def confident(args, seed=0):
    """A seeded GPT with weights scaled up, so that its greedy tokens vary and its top logits are far apart."""
    torch.manual_seed(seed)
    model = GPT(args).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)
            if not p.any():  # what starts at zero (x0_mix's mixes, zero_init_proj's projections) takes part too
                p.normal_(0.0, 0.5)
    return model


needs_compiler = pytest.mark.skipif(not has_compiler(), reason="torch.compile on the CPU needs a C++ compiler (c++)")


@pytest.mark.parametrize('recipe', RECIPES)
@torch.inference_mode()
def test_the_step_equals_the_forward_with_a_cache_at_every_position(recipe):
    model = confident(RECIPES[recipe])
    ids = torch.tensor([[1, 17, 33, 42, 8], [5, 6, 7, 8, 9]])  # two rows: the batch axis is kept apart
    forward, step = KVCache(model.args), KVCache(model.args)
    model(ids, forward), model(ids, step)
    for token in range(model.args.block_size - ids.size(1)):  # up to the last position
        token = torch.tensor([[token + 10], [token + 20]])
        expected = model(token, forward)[:, -1]
        got = decode.append(model, token, step)
        assert got.shape == (2, model.args.vocab_size)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
        assert got.argmax(-1).tolist() == expected.argmax(-1).tolist()
    assert step.length == forward.length == model.args.block_size
    with pytest.raises(ValueError, match='the cache is full: 16 tokens of block_size 16'):
        decode.append(model, token, step)


def test_each_product_of_a_3d_activations_view_gets_a_copy_of_its_own_and_the_same_result():
    from torch.fx.experimental.proxy_tensor import make_fx
    aten = torch.ops.aten
    weight, bias = torch.randn(6, 4), torch.randn(6)

    def products(x, h):  # a linear layer of a (B, 1, C) activation (with and without bias), and of a (B, C) one
        return (torch.nn.functional.linear(x, weight).flatten(), torch.nn.functional.linear(x, weight, bias).flatten(),
                (h @ weight.t()).flatten())

    x, h = torch.randn(1, 1, 4), torch.randn(1, 4)
    graph = make_fx(products)(x, h)
    expected = graph(x, h)
    decode.ContiguousRows()(graph.graph)
    graph.recompile()
    lefts = [node.args[1] if node.target is aten.addmm.default else node.args[0] for node in graph.graph.nodes
             if node.target in (aten.mm.default, aten.addmm.default)]
    assert [left.target for left in lefts] == [aten.clone.default, aten.clone.default, 'h_1']
    assert [left.args[0].target for left in lefts[:2]] == [aten.view.default] * 2
    assert lefts[0].kwargs == {'memory_format': torch.contiguous_format}
    for got, want in zip(graph(x, h), expected):
        assert torch.equal(got, want)


def test_the_race_draws_what_torch_multinomial_draws():
    """next_token's exponential race is torch.multinomial's draw on the CPU: the same ids from the same seed."""
    probs = torch.softmax(torch.randn(3, 50), dim=-1)
    ours, theirs = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    logits = probs.log()
    for _ in range(100):
        drawn = torch.multinomial(probs, 1, generator=theirs)
        assert torch.equal(generation.next_token(logits, 1.0, generator=ours), drawn)


def tokens(model, how, n=40, temperature=0.0, seed=3):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.tensor([[1, 17, 33, 42, 8]] * 2)
    return torch.stack(list(generation.generate(model, ids, n, temperature=temperature, generator=generator, how=how)),
                       dim=1).tolist()


@needs_compiler
@pytest.mark.parametrize('how', ['compile', 'aot'])
def test_a_compiled_step_generates_the_eager_tokens_past_block_size(how):
    """40 new tokens through a block of 16: the window is re-read (by GPT.forward) and stepped again (compiled)
    several times, greedy and sampled. Two recipes in turn: 'compile' then makes its graph again, 'aot' a library
    per model. The second has every change at once, the speedrun's among them (smear and bigram read the token
    before: the step is given it)."""
    for recipe in ('default', 'modern_speedrun'):
        model = confident(RECIPES[recipe])
        for temperature in (0.0, 1.0):
            expected = tokens(model, 'eager', temperature=temperature)
            assert tokens(model, how, temperature=temperature) == expected
            assert len(set(expected[0])) >= 8  # not one token repeated


@needs_compiler
def test_the_compiled_step_reads_each_models_own_weights():
    """Its guards skip the modules: a second model of the same recipe must still be read, not the first one's."""
    first, second = confident(RECIPES['default'], seed=0), confident(RECIPES['default'], seed=1)
    assert tokens(first, 'eager') != tokens(second, 'eager')
    assert tokens(first, 'compile') == tokens(first, 'eager')
    assert tokens(second, 'compile') == tokens(second, 'eager')


@needs_compiler
def test_a_library_made_before_is_loaded_again_and_never_for_another_model_or_code(monkeypatch, tmp_path):
    """A later start (a new AotStep: the process's step_for anew) loads the library an earlier one kept on disk, and
    gives the same tokens; another model's weights, or other code, make their own."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    first, second = confident(RECIPES['default'], seed=0), confident(RECIPES['default'], seed=1)
    made = []
    build = decode.AotStep.build
    monkeypatch.setattr(decode.AotStep, 'build', staticmethod(lambda *a: made.append(a[-1]) or build(*a)))
    kept = lambda: sorted(os.listdir(tmp_path / 'slm' / 'aot'))  # noqa: E731
    decode.step_for.cache_clear()
    expected = tokens(first, 'eager')
    assert tokens(first, 'aot') == expected and len(made) == 2  # the step and the re-read of a full window
    assert kept() == sorted(os.path.basename(p) for p in made)
    decode.step_for.cache_clear()  # as a new process would start
    assert tokens(first, 'aot') == expected and len(made) == 2  # loaded, not made
    # the rest within block_size (11 new tokens after 5): no re-read, so only the step is made
    decode.step_for.cache_clear()
    assert tokens(second, 'aot', n=11) == tokens(second, 'eager', n=11) and len(made) == 3  # its own weights: its own
    monkeypatch.setattr(decode, 'SOURCE_DIGEST', 'another version of the code')
    decode.step_for.cache_clear()
    assert tokens(first, 'aot', n=11) == [row[:11] for row in expected] and len(made) == 4 and len(kept()) == 4
    decode.step_for.cache_clear()


@pytest.mark.parametrize('how', ['compile', 'aot'])
def test_no_compiler_is_one_line_that_names_the_way_out(how, tiny_checkpoint, tmp_path):
    env = dict(os.environ, CXX=str(tmp_path / 'no-such-g++'), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / 'cache'),
               XDG_CACHE_HOME=str(tmp_path / 'xdg'))  # no library kept from another test's run
    result = subprocess.run([sys.executable, 'sample.py', f'--out_dir={tiny_checkpoint}', f'--decode={how}',
                             '--max_new_tokens=5'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --decode={how}: torch could not compile the decode step (InvalidCxxCompiler: No working C++"
        f" compiler found in torch._inductor.config.cpp.cxx: (None, '{tmp_path / 'no-such-g++'}')); install a C++"
        f" compiler (g++), or use --decode=eager"]
