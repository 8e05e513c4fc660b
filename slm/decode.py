"""The GPT's decode step: one new token per row through the model, reading and extending its KV cache, at shapes
that stay the same from token to token, so that torch.compile makes the whole step one graph.

The step is GPT.forward itself, with a StepCache in place of the KVCache: the model's own embedding, blocks and
head, so that no option of theirs can be missed here. A KVCache attends over the keys cached so far, a slice that
grows by one per token, so every token has new shapes; it is what reads a prompt, or a window again (many tokens
at once). A StepCache attends over the cache's whole block_size buffer instead, masking the positions after the
token's own: the buffers start at zero, so the masked ones weigh exactly 0. A position is a (1,) tensor, not a
Python int, so one compiled graph serves every position.

At the sizes this project trains on the CPU, the cost of a token is not its arithmetic but the work around it:
eager PyTorch dispatches hundreds of small operations per token, each with its Python and bookkeeping.
Compiled, the step is a few fused C++ loops per layer around its matrix products. docs/generation.md has the
measurements (bench.py --sections=generate) and what each choice below saved.
"""
import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import shutil
import tempfile
import warnings
import weakref

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass

from configurator import UserError
from model import KVCache
from slm import runtime, storage


class StepCache:
    """What GPT.forward reads one token per row through in decode_step, in place of a KVCache: the same buffers,
    the token's position a (1,) tensor, and the attention over each whole block_size buffer, the positions after the
    token's own masked (the buffers start at zero, so those weigh exactly 0). Every shape stays the same from token
    to token."""

    def __init__(self, position, token_before, keys, values):
        self.position, self.before = position, token_before
        self.keys, self.values = keys, values
        self.is_visible = torch.arange(keys[0].size(2), device=position.device) <= position  # (block_size,)

    def positions(self, T, device):
        return self.position

    def token_before(self, idx):
        return self.before

    def attend(self, layer, q, k, v, dropout_p=0.0):
        """Write k, v (B, n_head, 1, head_size) at the position; q's attention over the buffers (B, n_head, 1, hs)."""
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, self.position] = k
        values[:, :, self.position] = v
        # one query: its scores against every key position are a product and a sum, which compile fuses with the
        # mask and the softmax into one loop (a call to scaled_dot_product_attention would stay a call)
        scores = (q * keys).sum(-1) * q.size(-1) ** -0.5  # (B, n_head, block_size)
        weights = torch.softmax(scores.masked_fill(~self.is_visible, float('-inf')), dim=-1)
        return (weights.unsqueeze(-1) * values).sum(2, keepdim=True)  # (B, n_head, 1, hs)

    def advance(self, idx):
        """Nothing: append moves the KVCache on, outside the compiled step."""


def decode_step(model, token, position, token_before, keys, values):
    """The logits (B, V) of the token after token (B, 1), which sits at position (a (1,) tensor on the model's
    device, < block_size) after the tokens token_before (B, KVCache.back): GPT.forward through a StepCache. Writes
    each layer's key and value of token into keys[layer] and values[layer], the KVCache's (B, n_head, block_size,
    head_size) buffers, whose earlier positions hold the tokens before it."""
    return model(token, StepCache(position, token_before, keys, values))[:, -1]


class ContiguousRows(CustomGraphPass):
    """An inductor pass for the step: each matrix product's left operand that is a 2-D view of a larger activation
    becomes a copy of its own, which inductor computes in the kernel that makes the activation (no copy is left).

    Why: the step's activations are (B, 1, C), one position per row, and a linear layer multiplies their (B, C)
    view. Inductor gives a size-1 axis the stride 0, so at B = 1 that view has strides (0, 1), which ATen's mm does
    not pass to BLAS as it is: it copies the row before every product, 13 times a token at 4 layers (the `aot` token
    1.055x the time of a step written with 2-D activations; with this pass 0.97x: docs/generation.md)."""

    VIEWS = (torch.ops.aten.view.default, torch.ops.aten.reshape.default)
    LEFT = {torch.ops.aten.mm.default: 0, torch.ops.aten.addmm.default: 1}  # the product -> its left operand

    def __call__(self, graph):
        for node in [node for node in graph.nodes if node.target in self.LEFT]:
            left = node.args[self.LEFT[node.target]]
            if left.target in self.VIEWS and left.args[0].meta['val'].dim() > left.meta['val'].dim():
                with graph.inserting_before(node):
                    copy = graph.call_function(torch.ops.aten.clone.default, (left,),
                                               {'memory_format': torch.contiguous_format})
                copy.meta = dict(left.meta)
                node.replace_input_with(left, copy)

    def uuid(self):
        """What inductor's cache keys compiled code by: this file's source, with the rest of the step's."""
        return SOURCE_DIGEST


INDUCTOR = {'post_grad_custom_post_pass': ContiguousRows()}  # what both compiled steps give inductor


class CompiledStep:
    """decode_step under torch.compile: one graph per model recipe, batch size, dtype and device, made at the first
    call with them (seconds; torch keeps the compiled code on disk, so the next process makes it sooner).

    Two choices keep the cost per call low. cpp_wrapper: the graph's calls run from C++, not from Python. And
    torch.compile's checks before every call (guards) skip the model's modules: dozens of them, each with its
    tensors, a large share of a step. The graph is then only valid for one recipe (model.args), so when the
    recipe changes the compiled code is thrown away and made again. Tensor inputs stay checked: a new batch
    size or dtype compiles a graph of its own."""

    def __init__(self):
        self.compiled = torch.compile(decode_step, fullgraph=True, dynamic=False, options={
            'cpp_wrapper': True, 'guard_filter_fn': torch.compiler.skip_guard_on_all_nn_modules_unsafe,
            **INDUCTOR})
        self.recipe = None

    def __call__(self, model, token, cache):
        """The logits (B, V) after token (B, 1), as append computes them."""
        if model.args != self.recipe:
            torch._dynamo.reset_code(decode_step.__code__)
            self.recipe = dataclasses.replace(model.args)  # a copy: the model's own could change
        with cannot_compile('compile'):
            return append(model, token, cache, step=self.compiled)

    @staticmethod
    def read(model, ids, cache):
        """GPT.forward reading ids (B, T) into cache from position 0, eager: the logits (B, V) after them."""
        return model(ids, cache)[:, -1]

    def prepare(self, model, token, keep, cache):
        """Nothing made ahead: torch.compile makes its graph at the first step."""


class StepModule(torch.nn.Module):
    """decode_step as a module of its own, for torch.export: the model's weights are its constants."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, token, position, token_before, keys, values):
        return decode_step(self.model, token, position, token_before, keys, values)


class ReadModule(StepModule):
    """GPT.forward reading ids (B, T) from position 0 into the given cache buffers, for torch.export: the logits
    (B, V) after the last of them."""

    def forward(self, ids, keys, values):
        cache = KVCache(self.model.args)
        cache.keys, cache.values = list(keys), list(values)
        return self.model(ids, cache)[:, -1]


class AotStep:
    """decode_step compiled ahead of time by AOTInductor: torch.export traces it once, inductor compiles it and its
    calls into one shared library, and each step is one call into it, with none of torch.compile's per-call checks
    in Python. The same for GPT.forward re-reading a full window (always the same number of tokens: sample.py's
    GPTContext), which costs a few steps' time every few dozen tokens.

    A library holds a copy of the weights: each is made per model (and batch size, dtype, device, and for a
    read the number of tokens) at its first use, in seconds to tens of seconds, and serves that model as it was.
    It is kept on disk (runtime.cache_dir()/aot, the newest KEEP_LIBRARIES), under a name that hashes
    everything it was made from: the weights and model arguments, the inputs' shapes and dtypes, the device and
    machine, torch's version and the source of model.py and this file. A later start (sample.py, serve.py) for
    the same checkpoint on the same machine loads it in a fraction of a second; any other model, or code, makes
    its own."""

    def __init__(self):
        self.libraries = weakref.WeakKeyDictionary()  # model -> {(what, shape, dtype, device): the loaded library}
        self.weights = weakref.WeakKeyDictionary()  # model -> the digest of its weights when first asked

    def library(self, model, module, inputs):
        """The library of module(model) (StepModule or ReadModule) for inputs like these, loaded from the disk
        cache or made. It keeps the weights the model had then: one trained further needs a new AotStep."""
        libraries = self.libraries.setdefault(model, {})
        key = (module, inputs[0].shape, inputs[-1][0].dtype, inputs[0].device)
        if key not in libraries:
            path = self.cache_path(model, module, inputs)
            library = load_library(path)
            if library is None:
                with cannot_compile('aot'):
                    library = self.build(module(model), inputs, path)
            libraries[key] = library
        return libraries[key]

    def cache_path(self, model, module, inputs):
        """Where the library of module(model) for inputs is kept: a name that changes with anything it depends on."""
        if model not in self.weights:
            self.weights[model] = weights_digest(model)
        flat = [t for x in inputs for t in (x if isinstance(x, list) else [x])]
        made_of = {'weights': self.weights[model], 'args': dataclasses.asdict(model.args), 'module': module.__name__,
                   'inputs': [(list(t.shape), str(t.dtype)) for t in flat], 'device': str(flat[0].device),
                   'machine': runtime.machine_name(flat[0].device), 'torch': torch.__version__, 'code': SOURCE_DIGEST}
        name = hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest()[:32]
        return os.path.join(runtime.cache_dir(), 'aot', f'{name}.pt2')

    def __call__(self, model, token, cache):
        """The logits (B, V) after token (B, 1), as append computes them."""
        return append(model, token, cache, step=lambda _, *inputs: run_flat(self.library(model, StepModule, inputs),
                                                                             inputs))

    def prepare(self, model, token, keep, cache):
        """Make the libraries that steps of token's shape (B, 1) and re-reads of keep tokens (None: none) into
        cache (allocated already) will call, if they are not made yet."""
        # the ids before it, a tensor of its own: export would take one tensor given twice as one
        before = token.new_zeros(token.size(0), cache.back)
        self.library(model, StepModule, (token, torch.tensor([0], device=token.device), before, cache.keys,
                                         cache.values))
        if keep is not None:
            self.library(model, ReadModule, (token.repeat(1, keep), cache.keys, cache.values))

    def read(self, model, ids, cache):
        """The logits (B, V) after ids (B, T), read from position 0 into cache (allocated already), as
        GPT.forward computes them; cache.length is T after."""
        inputs = (ids, cache.keys, cache.values)
        logits = run_flat(self.library(model, ReadModule, inputs), inputs)
        cache.reset()
        cache.advance(ids)
        return logits

    @staticmethod
    def build(module, inputs, path):
        """Make the library, keep it at path (where the disk allows: else only in this process) and load it."""
        # contiguous, as run_flat passes them (the library reads the strides it was made for); the buffers copied, as
        # tracing writes to them
        inputs = tuple([t.clone() for t in x] if isinstance(x, list) else x.contiguous() for x in inputs)
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as folder:  # the loaded library no longer
            # needs its file; and torch's own use of a name it deprecated is not the user's concern
            warnings.filterwarnings('ignore', message='.*LeafSpec', category=FutureWarning)
            program = torch.export.export(module, inputs)
            made = torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(folder, 'decode.pt2'),
                                                            inductor_configs=INDUCTOR)
            keep_library(made, path)
            return torch._inductor.aoti_load_package(made)


KEEP_LIBRARIES = 32  # compiled steps kept on disk, the most recently used, in at most KEEP_BYTES
KEEP_BYTES = 4 * 2**30  # (each library holds a copy of its model's weights)


def weights_digest(model):
    """sha256 of a model's weights, names, shapes and dtypes: what a compiled library copies."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f'{name}:{tuple(tensor.shape)}:{tensor.dtype};'.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def source_digest():
    """sha256 of the code a library compiles: model.py and this file."""
    digest = hashlib.sha256()
    for path in (inspect.getsourcefile(KVCache), __file__):
        with open(path, 'rb') as f:
            digest.update(f.read())
    return digest.hexdigest()


SOURCE_DIGEST = source_digest()


def load_library(path):
    """The library kept at path, or None: none there, or one that does not load (a torn or foreign file)."""
    if not os.path.exists(path):
        return None
    try:
        library = torch._inductor.aoti_load_package(path)
    except Exception:  # noqa: BLE001 (whatever torch raises for a package it cannot read: make it again)
        return None
    try:
        os.utime(path)  # recently used: kept
    except OSError:  # another process's clean-up removed it after the load: the loaded library is whole
        pass
    return library


def keep_library(made, path):
    """Copy a made library to path atomically, and remove the oldest beyond KEEP_LIBRARIES; a disk that refuses
    leaves the library unkept, never a torn file."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(made, 'rb') as source, storage.atomic_write(path) as target:
            shutil.copyfileobj(source, target)
        kept = sorted((os.path.join(os.path.dirname(path), name) for name in os.listdir(os.path.dirname(path))
                       if name.endswith('.pt2')), key=os.path.getmtime, reverse=True)
        total = 0
        for rank, old in enumerate(kept):
            total += os.path.getsize(old)
            if rank >= KEEP_LIBRARIES or (rank and total > KEEP_BYTES):
                os.remove(old)
    except OSError:
        pass


def run_flat(library, inputs):
    """library(*inputs) for inputs of tensors and lists of tensors, whose one output is a tensor. Calling the loaded
    package itself parses its input and output layouts anew every time, a large share of a step; its loader takes
    the tensors as one flat list."""
    flat = [t for x in inputs for t in (x if isinstance(x, list) else [x.contiguous()])]  # the strides it was made for
    return library.loader.boxed_run(flat)[0]


@contextlib.contextmanager
def cannot_compile(how):
    """Turn torch's failure to compile (most often: no C++ compiler) into sample.py's one-line error."""
    try:
        yield
    except runtime.compile_errors() as error:
        raise UserError(f"--decode={how}: torch could not compile the decode step ({runtime.compile_failure(error)});"
                        f" install a C++ compiler (g++), or use --decode=eager")


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
    logits = step(model, token, position, cache.last_ids, cache.keys, cache.values)
    cache.advance(token)
    return logits
