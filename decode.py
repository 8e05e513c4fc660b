"""The GPT's decode step: one new token per row through the model, reading and extending its KV cache, at shapes
that stay the same from token to token, so that torch.compile makes the whole step one graph.

GPT.forward with a KVCache computes the same logits. It attends over the keys cached so far, a slice that grows
by one per token, so every token has new shapes; it is what reads a prompt, or a window again (many tokens at
once). decode_step attends over the cache's whole block_size buffer instead, masking the positions after the
token's own: the buffers start at zero, so the masked ones weigh exactly 0. A position is a (1,) tensor, not a
Python int, so one compiled graph serves every position.

At the sizes this project trains on the CPU, the cost of a token is not arithmetic (the 4 x 128 character GPT
does about 1.6 MFLOP per token) but the work around it: eager PyTorch dispatches some 200 operations per token,
each a few microseconds of Python and bookkeeping. Compiled, the step is a few fused C++ loops per layer around
its matrix products. docs/generation.md has the measurements (bench.py --sections=generate).
"""
import dataclasses
import functools
import os
import tempfile
import weakref

import torch

from model import rms_norm_in_dtype, rotate


def decode_step(model, token, position, keys, values):
    """The logits (B, V) of the token after token (B, 1), which sits at position (a (1,) tensor on the model's
    device, < block_size). Writes each layer's key and value of token into keys[layer] and values[layer], the
    KVCache's (B, n_head, block_size, head_size) buffers, whose earlier positions hold the tokens before it."""
    args = model.args
    B, C, n_head = token.size(0), args.n_embd, args.n_head
    x = model.wte(token[:, 0])  # (B, C): one position, so no time axis
    if args.rope:
        rotary = (model.rotary_cos[position], model.rotary_sin[position])  # each (1, head_size / 2)
    else:
        x = x + model.wpe(position)
    is_visible = torch.arange(args.block_size, device=token.device) <= position  # (block_size,): this key or earlier
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        q, k, v = (t.view(B, n_head, 1, C // n_head) for t in attn.qkv(block.ln_1(x)).split(C, dim=1))
        if attn.q_norm is not None:
            q, k = rms_norm_in_dtype(q, attn.q_norm), rms_norm_in_dtype(k, attn.k_norm)
        if args.rope:
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        keys[layer][:, :, position] = k
        values[layer][:, :, position] = v
        # one query: its scores against every key position are a product and a sum, which compile fuses with the
        # mask and the softmax into one loop (a call to scaled_dot_product_attention would stay a call)
        scores = (q * keys[layer]).sum(-1) * (C // n_head) ** -0.5  # (B, n_head, block_size)
        weights = torch.softmax(scores.masked_fill(~is_visible, float('-inf')), dim=-1)
        y = (weights.unsqueeze(-1) * values[layer]).sum(2)  # (B, n_head, hs)
        x = x + attn.proj(y.reshape(B, C))
        x = x + block.mlp(block.ln_2(x))
    return model.lm_head(model.ln_f(x))


class CompiledStep:
    """decode_step under torch.compile: one graph per model recipe, batch size, dtype and device, made at the first
    call with them (seconds; torch keeps the compiled code on disk, so the next process makes it sooner).

    Two choices keep the cost per call low. cpp_wrapper: the graph's calls run from C++, not from Python. And
    torch.compile's checks before every call (guards) skip the model's modules: dozens of them, each with its
    tensors, took a tenth of a step. The graph is then only valid for one recipe (model.args), so when the
    recipe changes the compiled code is thrown away and made again. Tensor inputs stay checked: a new batch
    size or dtype compiles a graph of its own."""

    def __init__(self):
        self.compiled = torch.compile(decode_step, fullgraph=True, dynamic=False, options={
            'cpp_wrapper': True, 'guard_filter_fn': torch.compiler.skip_guard_on_all_nn_modules_unsafe})
        self.recipe = None

    def __call__(self, model, token, cache):
        """The logits (B, V) after token (B, 1), as append computes them."""
        if model.args != self.recipe:
            torch._dynamo.reset_code(decode_step.__code__)
            self.recipe = dataclasses.replace(model.args)  # a copy: the model's own could change
        return append(model, token, cache, step=self.compiled)


class StepModule(torch.nn.Module):
    """decode_step as a module of its own, for torch.export: the model's weights are its constants."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, token, position, keys, values):
        return decode_step(self.model, token, position, keys, values)


class AotStep:
    """decode_step compiled ahead of time by AOTInductor: torch.export traces it once, inductor compiles it and its
    calls into one shared library, and each step is one call into it, with none of torch.compile's per-call checks
    in Python. The library holds a copy of the weights: it is made per model (per batch size, dtype and device as
    well) at the first step, in tens of seconds, and serves that model as it was then."""

    def __init__(self):
        self.runners = weakref.WeakKeyDictionary()  # model -> {(batch size, dtype, device): the loaded library}

    def __call__(self, model, token, cache):
        """The logits (B, V) after token (B, 1), as append computes them."""
        runners = self.runners.setdefault(model, {})
        key = (token.size(0), cache.keys[0].dtype, str(token.device))
        if key not in runners:
            runners[key] = self.build(model, token, cache)
        return append(model, token, cache, step=lambda _, *inputs: runners[key](*inputs))

    @staticmethod
    def build(model, token, cache):
        position = torch.tensor([cache.length], device=token.device)
        keys, values = [k.clone() for k in cache.keys], [v.clone() for v in cache.values]  # tracing writes to them
        program = torch.export.export(StepModule(model), (token, position, keys, values))
        with tempfile.TemporaryDirectory() as folder:  # the loaded library no longer needs its file
            return torch._inductor.aoti_load_package(torch._inductor.aoti_compile_and_package(
                program, package_path=os.path.join(folder, 'decode_step.pt2')))


STEPS = {'compile': CompiledStep, 'aot': AotStep}  # sample.py --decode: the ways to step beside eager GPT.forward


@functools.cache
def step_for(how):
    """The process's one CompiledStep ('compile') or AotStep ('aot'), which keep what they make."""
    return STEPS[how]()


def append(model, token, cache, step=decode_step):
    """The logits (B, V) after token (B, 1), which sits at position cache.length of the cache's sequences: the
    cache holds its keys and values after, and cache.length grows by one. The cache must have read a token already
    (GPT.forward allocates its buffers)."""
    if cache.length >= model.args.block_size:
        raise ValueError(f"the cache is full: {cache.length} tokens of block_size {model.args.block_size}")
    position = torch.tensor([cache.length], device=token.device)
    logits = step(model, token, position, cache.keys, cache.values)
    cache.length += 1
    return logits
