"""The models: a GPT and an LSTM language model. Each maps token ids to next-token logits and nothing more: the
loss and optimizer live in slm/loss.py and slm/optim.py, generation in slm/generation.py. For generation the GPT
can read and extend a KVCache that the caller owns, so that each new token costs one position instead of the
whole context. Their options are declared once, in ModelOptions (train.py's model keys).

Shapes: B batch, T time (tokens), C n_embd, H n_hidden, V vocab_size, L n_layer.
"""
import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from configurator import option


MODEL_TYPES = ('gpt', 'lstm')
NORMS = ('layernorm', 'rmsnorm')
MLPS = ('gelu', 'gelu_tanh', 'relu2', 'swiglu')
MLP_CHANGES = {'relu2': 'relu2', 'swiglu': 'swiglu'}  # the recipe's (gelu_tanh: GPT-2's own GELU, no change)


def recipe_option(default, gpt2, changes=None, **valid):
    """A GPT recipe option: a field with its default and valid values (configurator.option), and GPT-2's value,
    gpt2: config/recipe_gpt2.py's, and what a checkpoint saved before the option existed was trained with
    (checkpoint.load fills it in). changes, {name: value}: what ablate.py --what=recipe tries instead of gpt2
    (default: the other boolean, or every other choice, each named by its value)."""
    if changes is None:  # a boolean's one change is named after the option (None here), a choice's by its value
        changes = {c: c for c in valid['choices'] if c != gpt2} if 'choices' in valid else {None: not gpt2}
    return option(default, metadata={'gpt2': gpt2, 'changes': changes}, **valid)


@dataclasses.dataclass
class ModelOptions:
    """A model's options that a user chooses: train.py's model keys (its TrainConfig extends this class, so each
    is declared here once, with its default, valid values and comment)."""
    model_type: str = option('gpt', choices=MODEL_TYPES)  # the network: a decoder-only transformer or an LSTM
    n_layer: int = option(4, low=1)  # transformer blocks (GPT) or stacked LSTM layers
    n_head: int = option(4, low=1)   # GPT only: attention heads, n_embd divided among them
    n_embd: int = option(128, low=1)  # width: the token embedding and the residual stream (GPT)
    n_hidden: int = option(0, low=0)  # LSTM only: hidden size (0 = n_embd, which lets the head share the embedding)
    dropout: float = option(0.0, low=0, high=1, high_open=True)  # share of activations zeroed in training
    bias: bool = False            # biases in the linear layers and layer norms
    # the GPT's recipe: the defaults are the best combination ablate.py found (docs/models.md, The GPT's recipe);
    # config/recipe_gpt2.py sets GPT-2's, config/recipe_modern.py every change at once
    rope: bool = recipe_option(True, gpt2=False)  # GPT: rotary position embeddings on queries and keys (no
    #                               learned position table)
    norm: str = recipe_option('layernorm', gpt2='layernorm', choices=NORMS)  # GPT: the normalization layers
    #                               (rmsnorm: no mean, no bias)
    qk_norm: bool = recipe_option(False, gpt2=False)  # GPT: RMSNorm of each head's queries and keys before
    #                               attention
    mlp: str = recipe_option('gelu', gpt2='gelu', choices=MLPS, changes=MLP_CHANGES)  # GPT: the MLP's activation
    #                               (gelu_tanh: its tanh approximation, as GPT-2's weights; relu2: ReLU squared;
    #                               swiglu: gated, 3 matrices of 8/3 n_embd)
    zero_init_proj: bool = recipe_option(False, gpt2=False)  # GPT: the output projections of attention and MLP
    #                               (and an untied head) start at 0
    tie_head: bool = recipe_option(True, gpt2=True, changes={'untied_head': False})  # GPT: the output head
    #                               shares the token embedding's matrix (False: its own)
    # the speedrun's techniques (docs/models.md, Learning per minute III), each off unless ablate.py found it pays
    x0_mix: bool = recipe_option(False, gpt2=False)  # GPT: each block reads a learned mix of the residual
    #                               stream and the token embedding x0 (two scalars per layer, starting at 1 and 0)
    value_embed: bool = recipe_option(False, gpt2=False)  # GPT: in alternate layers, the last included, a token
    #                               embedding of their own added to the values, gated per head by the block's input
    smear: bool = recipe_option(False, gpt2=False)  # GPT: the previous token's embedding mixed into each
    #                               token's by a learned gate that starts shut
    bigram: bool = recipe_option(False, gpt2=False)  # GPT: an embedding of the (previous, current) token pair
    #                               added to the token's (an exact table up to 256 ids, hashed into 4 x vocab rows
    #                               above), starting at zero
    ngram: int = recipe_option(0, gpt2=0, changes={'trigram': 3}, choices=(0, 3, 4, 5, 6))  # GPT: embeddings of the
    #                               last n tokens for each n from 3 to ngram, each order's hashed into a table
    #                               of model.NGRAM_ROWS rows, added to the token's, starting at zero (0 = none)
    logit_softcap: float = recipe_option(0.0, gpt2=0.0, changes={'softcap': 15.0}, low=0)  # GPT: logits
    #                               squashed to cap x tanh(logits / cap), so none grows past +-cap (0 = off)
    block_size: int = option(128, low=1)  # tokens per window (GPT context; LSTM steps of backprop through time)


@dataclasses.dataclass
class ModelArgs(ModelOptions):
    """Everything a model is built from: its options, and what the data gives."""
    vocab_size: int = 0       # number of token ids (from the tokenizer)
    pad_id: int | None = None  # the tokenizer's padding id, whose embedding stays zero (None: no padding)


def recipe_fields():
    """The GPT recipe options, in declaration order: {name: dataclasses.Field}."""
    return {f.name: f for f in dataclasses.fields(ModelOptions) if 'gpt2' in f.metadata}


def gpt2_recipe():
    """{option: GPT-2's value} of every recipe option."""
    return {name: f.metadata['gpt2'] for name, f in recipe_fields().items()}


def recipe_changes():
    """{change: (option, value)}: every change from GPT-2's recipe that ablate.py can try, in declaration order."""
    return {change or name: (name, value) for name, f in recipe_fields().items()
            for change, value in f.metadata['changes'].items()}


SMEAR_CHANNELS = 24      # smear: the gate reads this many of a token's first channels (nanochat's choice)
VALUE_GATE_CHANNELS = 32  # value_embed: the per-head gates read this many of the block input's first channels
EXACT_BIGRAM_VOCAB = 256  # bigram: up to this many ids one row per pair; above, pairs hashed into 4 x vocab rows
NGRAM_ROWS = 32_749      # ngram: rows of each order's table, a prime: an n-gram's row is its index (its ids as the
#                          digits of a base-vocab_size number) modulo it
ROPE_BASE = 10000.0  # the rotary wavelengths run from 2 pi to about 2 pi x ROPE_BASE positions (RoFormer's value)


def norm_layer(args, size):
    """LayerNorm, or RMSNorm: no mean subtracted and no bias, so a little cheaper, and as good in practice
    (Zhang & Sennrich 2019; LLaMA)."""
    if args.norm == 'rmsnorm':
        return nn.RMSNorm(size)
    return nn.LayerNorm(size, bias=args.bias)


def rms_norm_in_dtype(x, norm):
    """An RMSNorm of x in x's dtype, its gains cast to it: under autocast q and k are bfloat16, and torch's
    fused kernel wants input and gains alike."""
    return F.rms_norm(x, norm.normalized_shape, norm.weight.to(x.dtype), norm.eps)


def rotary_tables(args):
    """(cos, sin), each (block_size, head_size), as rotate uses them: the angle position x frequency of every
    position and pair, channel i and i + head_size / 2 of a pair sharing one angle; sin negated in the first half."""
    head_size = args.n_embd // args.n_head
    frequencies = ROPE_BASE ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = torch.arange(args.block_size, dtype=torch.float32)[:, None] * frequencies  # (block_size, hs / 2)
    return torch.cat([angles.cos(), angles.cos()], dim=-1), torch.cat([-angles.sin(), angles.sin()], dim=-1)


def rotate(x, cos, sin):
    """Rotate x (B, n_head, T, head_size) pair by pair (channel i with i + head_size / 2) by the angles of its
    positions, cos and sin (..., T, head_size) from rotary_tables. A query at position m and a key at position n
    then meet in their dot product as q . R(n - m) k: attention sees how far apart they are, not where they are.
    With x = (x1, x2): (x1 cos - x2 sin, x2 cos + x1 sin), as four operations (the halves swapped by a roll),
    each exactly the product or sum it was as seven (negating is exact), so the same numbers."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + x.roll(x.size(-1) // 2, dims=-1) * sin


def attend(q, k, v, mask, is_causal, dropout_p):
    """scaled_dot_product_attention of q, k, v (B, n_head, T, head_size), in their dtype; on the CPU computed in
    float32 whatever the autocast: there its bfloat16 kernels took 2.5-4x float32's time forward and backward
    (a 2-core AMD EPYC with AVX-512 BF16, torch 2.13: 50 against 20 ms at batch 32, 4 heads of 32, T=128), while the
    matmuls around it gain from bfloat16 (docs/results.md, The default path per step)."""
    if q.device.type != 'cpu' or q.dtype == torch.float32:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p)
    with torch.autocast('cpu', enabled=False):
        y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=is_causal,
                                           dropout_p=dropout_p)
    return y.to(q.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, args):
        super().__init__()
        assert args.n_embd % args.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head = args.n_head
        self.dropout = args.dropout
        self.qkv = nn.Linear(args.n_embd, 3 * args.n_embd, bias=args.bias)
        # qk_norm: unit-RMS queries and keys (times a learned gain), so that attention logits cannot grow without
        # bound: higher learning rates train stably (Dehghani et al. 2023; OLMo 2)
        head_size = args.n_embd // args.n_head
        self.q_norm, self.k_norm = (nn.RMSNorm(head_size), nn.RMSNorm(head_size)) if args.qk_norm else (None, None)
        self.proj = nn.Linear(args.n_embd, args.n_embd, bias=args.bias)
        self.proj.is_residual_projection = True
        self.resid_dropout = nn.Dropout(args.dropout)

    def forward(self, x, cache=None, layer=0, mask=None, rotary=None, values=None):
        """x (B, T, C). cache: a KVCache (or decode.StepCache) that stores this layer's keys and values and
        attends over them (generation). mask (B, 1, T, T)
        boolean, True where a query may attend to a key: a document mask (None: causal). rotary: (cos, sin) of
        the tokens' positions, (..., T, head_size), with rotary position embeddings (None: without). values:
        (B, T, C) added to the values (--value_embed), or None."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        if values is not None:
            v = v + values.to(v.dtype)
        # (B, T, C) -> (B, n_head, T, C // n_head)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.q_norm is not None:
            q, k = rms_norm_in_dtype(q, self.q_norm), rms_norm_in_dtype(k, self.k_norm)
        if rotary is not None:  # before the cache: a cached key keeps the rotation of the position it was read at
            q, k = rotate(q, *rotary), rotate(k, *rotary)
        dropout_p = self.dropout if self.training else 0.0
        if cache is None:
            y = attend(q, k, v, mask, mask is None and T > 1, dropout_p)
        else:  # the cache stores this layer's keys and values and attends over all it holds
            y = cache.attend(layer, q, k, v, dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.proj(y))


def mlp_hidden(args):
    """The MLP's hidden width: 4C, or for SwiGLU 8C/3 rounded up to a multiple of 8 (its two input matrices
    then hold about the parameters of the others' one)."""
    return math.ceil(8 * args.n_embd / 3 / 8) * 8 if args.mlp == 'swiglu' else 4 * args.n_embd


class MLP(nn.Module):
    """Linear(C, 4C) -> GELU -> Linear(4C, C), or with another activation:

    gelu_tanh  GELU's tanh approximation, the one GPT-2's released weights were trained with (train.py
            --init_from=DIR reads them with it)
    relu2   ReLU(x)^2: sparse like ReLU, smooth at 0 like GELU, cheaper than both (So et al. 2021, Primer)
    swiglu  SiLU(gate) * up, a gated unit (Shazeer 2020; LLaMA); gate and up are the two halves of one
            Linear(C, 2H), with H = 8C/3 rounded up to a multiple of 8 so that its 3 matrices hold about as
            many weights as GELU's 2 of 4C
    """

    def __init__(self, args):
        super().__init__()
        self.activation = args.mlp
        hidden = mlp_hidden(args)
        self.up = nn.Linear(args.n_embd, 2 * hidden if args.mlp == 'swiglu' else hidden, bias=args.bias)
        self.down = nn.Linear(hidden, args.n_embd, bias=args.bias)
        self.down.is_residual_projection = True
        self.dropout = nn.Dropout(args.dropout)

    def forward(self, x):
        h = self.up(x)
        if self.activation == 'relu2':
            h = F.relu(h).square()
        elif self.activation == 'swiglu':
            gate, h = h.chunk(2, dim=-1)
            h = F.silu(gate) * h
        else:
            h = F.gelu(h, approximate='tanh' if self.activation == 'gelu_tanh' else 'none')
        return self.dropout(self.down(h))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, args):
        super().__init__()
        self.ln_1 = norm_layer(args, args.n_embd)
        self.attn = CausalSelfAttention(args)
        self.ln_2 = norm_layer(args, args.n_embd)
        self.mlp = MLP(args)

    def forward(self, x, cache=None, layer=0, mask=None, rotary=None, values=None):
        x = x + self.attn(self.ln_1(x), cache, layer, mask, rotary, values)
        return x + self.mlp(self.ln_2(x))


def document_mask(doc_ids):
    """(B, 1, T, T) boolean attention mask from doc_ids (B, T): a position attends to itself and the positions
    before it that carry the same id. With documents laid end to end it is block-diagonal and causal:

        doc_ids  0 0 0 1 1        query row 3 (document 1's first token) sees key 3 only;
        mask     1 . . . .        row 2 sees keys 0-2. Built in one broadcast comparison, on the device,
                 1 1 . . .        once per forward and shared by every layer; scaled_dot_product_attention
                 1 1 1 . .        takes it as attn_mask (no flash kernel with a mask on CUDA: the
                 . . . 1 .        memory-efficient one, O(T^2) booleans per row).
                 . . . 1 1
    """
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return ((doc_ids[:, :, None] == doc_ids[:, None, :]) & causal)[:, None]


def value_embed_layers(n_layer):
    """The layers with a value embedding: every other one, counted back from the last."""
    return [layer for layer in range(n_layer) if (n_layer - 1 - layer) % 2 == 0]


def bigram_rows(vocab_size):
    return vocab_size * vocab_size if vocab_size <= EXACT_BIGRAM_VOCAB else 4 * vocab_size


def ids_read_before(args):
    """How many ids before a token its embedding reads: ngram - 1 with --ngram, 1 with --bigram or --smear (and
    without: a KVCache keeps the last id read either way)."""
    return max(args.ngram - 1, 1)


def previous_tokens(idx, cache, positions, back=1):
    """[(B, T)] * back: the ids of the tokens 1, 2, ... back before each of idx's (B, T), -1 where there is none:
    before a window's first position (unless the cache holds the tokens before it) and before the first of each
    document (position 0)."""
    before = cache.token_before(idx) if cache is not None else torch.full_like(idx[:, :1], -1).expand(-1, back)
    read = torch.cat([before, idx], dim=1)  # (B, back + T): a cache keeps back ids, as GPT.forward asks
    previous = [read[:, back - j:read.size(1) - j] for j in range(1, back + 1)]
    return previous if positions is None else [p.masked_fill(positions < j, -1) for j, p in enumerate(previous, 1)]


def ngram_rows(previous, idx, vocab_size):
    """The table rows of --ngram's orders 3, 4, ...: for each, the index of (the n - 1 ids before, the id) as the
    digits of a base-vocab_size number, modulo NGRAM_ROWS (taken digit by digit: no order overflows); -1 where a
    token lacks an id before it."""
    index, rows = idx % NGRAM_ROWS, []
    for n, before in enumerate(previous, 2):
        index = (index + before.clamp(min=0) * pow(vocab_size, n - 1, NGRAM_ROWS)) % NGRAM_ROWS
        if n >= 3:
            rows.append(torch.where(before >= 0, index, -1))
    return rows


def embed(model, idx, previous):
    """The token embeddings of idx (B, T), with --bigram's, --ngram's and --smear's
    additions, which read the ids before it, previous (previous_tokens: 1, 2, ... back; -1: none)."""
    args, x = model.args, model.wte(idx)
    if args.bigram or args.smear:
        has_previous = (previous[0] >= 0).unsqueeze(-1).to(x.dtype)
        before = previous[0].clamp(min=0)
    if args.bigram:
        pair = before * args.vocab_size + idx if args.vocab_size <= EXACT_BIGRAM_VOCAB else (
            (before * 1_000_003 + idx) % bigram_rows(args.vocab_size))
        x = x + model.bigram_embed(pair) * has_previous
    if args.ngram:
        for table, rows in zip(model.ngram_embeds, ngram_rows(previous, idx, args.vocab_size)):
            x = x + table(rows.clamp(min=0)) * (rows >= 0).unsqueeze(-1).to(x.dtype)
    if args.smear:  # nanochat's smear: a gate in (0, lambda) of the token's first channels
        gate = model.smear_lambda * torch.sigmoid(model.smear_gate(x[..., :SMEAR_CHANNELS]))
        x = x + gate * model.wte(before) * has_previous
    return x


def block_input(model, layer, x, x0):
    """--x0_mix: the residual stream x as block layer reads it, lambda x + mu x0 (x0: the embeddings)."""
    return model.x_lambdas[layer] * x + model.x0_lambdas[layer] * x0 if model.args.x0_mix else x


def value_embedding(model, layer, x, idx):
    """--value_embed: what block layer adds to its values, (..., n_embd) like x (the block's input), or None: the
    layer's own embedding of the tokens idx, each head's share times its gate, 2 sigmoid(W x[:32]) (1 at the
    start: the gates start at zero)."""
    table = model.value_embeds[str(layer)] if model.args.value_embed and str(layer) in model.value_embeds else None
    if table is None:
        return None
    gates = 2 * torch.sigmoid(model.value_gates[str(layer)](x[..., :VALUE_GATE_CHANNELS]))  # (..., n_head)
    values = table(idx)
    return (values.unflatten(-1, (model.args.n_head, -1)) * gates.unsqueeze(-1).to(values.dtype)).flatten(-2)


def soft_cap(model, logits):
    """--logit_softcap: cap x tanh(logits / cap), else the logits as they are."""
    cap = model.args.logit_softcap
    return cap * torch.tanh(logits / cap) if cap else logits


def add_speedrun_modules(model, args):
    """The modules of the speedrun options a GPT of args has, made after the others are drawn (so those are the
    draws of the model without them) and starting as no-ops: x0 mixes at (1, 0), a shut smear gate, bigram and
    n-gram tables at zero; value embeddings drawn as the token embedding is, with open gates (2 sigmoid(0) = 1)."""
    if args.x0_mix:
        model.x_lambdas = nn.Parameter(torch.ones(args.n_layer))
        model.x0_lambdas = nn.Parameter(torch.zeros(args.n_layer))
    if args.value_embed:
        layers = [str(layer) for layer in value_embed_layers(args.n_layer)]
        model.value_embeds = nn.ModuleDict({layer: nn.Embedding(args.vocab_size, args.n_embd, padding_idx=args.pad_id)
                                            for layer in layers})
        model.value_gates = nn.ModuleDict({layer: nn.Linear(min(VALUE_GATE_CHANNELS, args.n_embd), args.n_head,
                                                            bias=False) for layer in layers})
        for table in model.value_embeds.values():
            model._init_weights(table)
    if args.smear:
        model.smear_gate = nn.Linear(min(SMEAR_CHANNELS, args.n_embd), 1, bias=False)
        model.smear_lambda = nn.Parameter(torch.zeros(1))
    if args.bigram:
        model.bigram_embed = nn.Embedding(bigram_rows(args.vocab_size), args.n_embd)
    if args.ngram:
        model.ngram_embeds = nn.ModuleList(nn.Embedding(NGRAM_ROWS, args.n_embd) for _ in range(3, args.ngram + 1))
    with torch.no_grad():
        for module in [*(model.value_gates.values() if args.value_embed else []),
                       *([model.smear_gate] if args.smear else []), *([model.bigram_embed] if args.bigram else []),
                       *(model.ngram_embeds if args.ngram else [])]:
            module.weight.zero_()


class GPT(nn.Module):
    def __init__(self, args):
        super().__init__()
        if args.norm not in NORMS or args.mlp not in MLPS:
            raise ValueError(f"unknown norm {args.norm!r} or mlp {args.mlp!r}; known: {NORMS}, {MLPS}")
        self.args = args
        self.wte = nn.Embedding(args.vocab_size, args.n_embd, padding_idx=args.pad_id)
        if args.rope:  # positions enter attention as rotations of q and k (rotate): no table of block_size x C
            # to learn, and what a head learns about "3 tokens back" holds at every position (Su et al. 2021).
            # The tables are computed, not learned: not saved (persistent=False), so not in the state_dict.
            cos, sin = rotary_tables(args)
            self.register_buffer('rotary_cos', cos, persistent=False)
            self.register_buffer('rotary_sin', sin, persistent=False)
        else:
            self.wpe = nn.Embedding(args.block_size, args.n_embd)
        self.drop = nn.Dropout(args.dropout)
        self.blocks = nn.ModuleList(Block(args) for _ in range(args.n_layer))
        self.ln_f = norm_layer(args, args.n_embd)
        self.lm_head = nn.Linear(args.n_embd, args.vocab_size, bias=False)
        if args.tie_head:
            self.lm_head.weight = self.wte.weight  # tied: one matrix reads tokens in and writes them out
        # else the head learns its own V x C matrix: reading a token and predicting one are different jobs, and
        # a small model's shared matrix must compromise between them (nanoGPT speedrun, nanochat)
        self.apply(self._init_weights)
        add_speedrun_modules(self, args)

    def _init_weights(self, module):
        # GPT-2's initialization: N(0, 0.02), residual projections scaled down by sqrt(2 * n_layer)
        # so that the residual stream's variance does not grow with depth.
        if isinstance(module, (nn.Linear, nn.Embedding)) and not (module is self.lm_head and self.args.tie_head):
            std = 0.02 / math.sqrt(2 * self.args.n_layer) if getattr(module, 'is_residual_projection', 0) else 0.02
            nn.init.normal_(module.weight, mean=0.0, std=std)
            is_output = getattr(module, 'is_residual_projection', 0) or module is self.lm_head
            if self.args.zero_init_proj and is_output:
                # every block starts as the identity and the first logits are uniform: the early steps shape
                # each layer from a clean residual stream instead of undoing random writes (nanoGPT speedrun)
                nn.init.zeros_(module.weight)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def forward(self, idx, cache=None, *, positions=None, doc_ids=None):
        """idx (B, T) token ids -> logits (B, T, V).

        Without a cache idx is the whole context, T <= block_size. With a KVCache idx continues the tokens the
        cache holds: they sit at positions cache.length ... cache.length + T - 1 (< block_size), their keys and
        values are added to the cache, and cache.length grows by T.

        Training batches with several documents in a row (packing) or padding: doc_ids (B, T) keeps attention
        among positions of equal id, and positions (B, T) restart the position ids at each document.
        """
        B, T = idx.shape
        if cache is not None and (positions is not None or doc_ids is not None):
            raise ValueError("positions and doc_ids are for training batches, not for generation with a KV cache")
        if cache is not None:
            pos = cache.positions(T, idx.device)  # (T,): where the tokens after the cached ones sit
        elif T > self.args.block_size:
            raise ValueError(f"sequence of {T} tokens is longer than block_size {self.args.block_size}")
        else:
            pos = torch.arange(T, device=idx.device) if positions is None else positions
        reads_before = self.args.smear or self.args.bigram or self.args.ngram
        previous = previous_tokens(idx, cache, positions, ids_read_before(self.args)) if reads_before else None
        if self.args.rope:  # the angles of each token's position: (T, hs) -> (1, T, hs), or (B, 1, T, hs)
            rotary = (self.rotary_cos[pos].unsqueeze(-3), self.rotary_sin[pos].unsqueeze(-3))
            x = self.drop(embed(self, idx, previous))  # (B, T, C)
        else:
            rotary = None
            x = self.drop(embed(self, idx, previous) + self.wpe(pos))  # (B, T, C)
        mask = None if doc_ids is None else document_mask(doc_ids)
        x0 = x
        for layer, block in enumerate(self.blocks):
            x = block_input(self, layer, x, x0)
            x = block(x, cache, layer, mask, rotary, value_embedding(self, layer, x, idx))
        if cache is not None:
            cache.advance(idx)
        return soft_cap(self, self.lm_head(self.ln_f(x)))


class KVCache:
    """The keys and values of the tokens a GPT has read, per layer, for generation one token at a time.

    The caller creates one per batch of sequences and passes it to every GPT.forward of that batch; the model
    writes each layer's new keys and values at positions length, length + 1, ... and attends over all of them.
    It lives here, beside the attention, because its layout is the attention's: per layer a (B, n_head,
    block_size, C // n_head) buffer of keys and one of values, allocated at the first write with the batch
    size, dtype and device of what is written, and zeroed (decode.py attends over a whole buffer, masking the
    positions not written yet: they must hold numbers).

    GPT.forward asks a cache four things: the positions of the tokens it reads (positions), the tokens before
    them (token_before), one layer's attention with its keys and values stored (attend), and that the tokens
    were read (advance). slm/decode.py's StepCache answers the same four at fixed shapes for its compiled step.
    """

    def __init__(self, args):
        self.block_size = args.block_size
        self.keys, self.values = [None] * args.n_layer, [None] * args.n_layer
        self.length = 0  # positions filled: the next token read sits at this position
        self.back = ids_read_before(args)
        self.last_ids = None  # (B, back): the last tokens read (--smear, --bigram and --ngram read those before)

    def reset(self):
        """Forget every token (the buffers stay allocated for the next ones)."""
        self.length = 0

    def positions(self, T, device):
        """(T,): the positions of T tokens read after the cached ones."""
        if self.length + T > self.block_size:
            raise ValueError(f"sequence of {self.length + T} tokens is longer than block_size {self.block_size}")
        return torch.arange(self.length, self.length + T, device=device)

    def token_before(self, idx):
        """(B, back): the ids of the last back tokens read before idx (B, T), the latest last; -1 where the cache
        holds none."""
        return self.last_ids if self.length else torch.full_like(idx[:, :1], -1).expand(-1, self.back)

    def attend(self, layer, q, k, v, dropout_p=0.0):
        """Store one layer's k, v (B, n_head, T, head_size) at positions length ... length + T - 1 and return the
        attention of q (B, n_head, T, head_size) over the keys and values of positions 0 ... length + T - 1."""
        if self.keys[layer] is None:
            B, n_head, _, head_size = k.shape
            self.keys[layer] = k.new_zeros(B, n_head, self.block_size, head_size)
            self.values[layer] = v.new_zeros(B, n_head, self.block_size, head_size)
        start, T = self.length, k.size(2)
        self.keys[layer][:, :, start:start + T] = k
        self.values[layer][:, :, start:start + T] = v
        k, v = self.keys[layer][:, :, :start + T], self.values[layer][:, :, :start + T]
        # query i sits at position start + i: it sees every cached key and itself. From position 0 this is
        # exactly the cache-less computation; one new query needs no mask.
        mask = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(start) if start and T > 1 else None
        return attend(q, k, v, mask, start == 0 and T > 1, dropout_p)

    def advance(self, idx):
        """The tokens idx (B, T) were read: the next ones sit T positions on."""
        T = idx.size(1)
        self.last_ids = idx[:, T - self.back:] if T >= self.back else torch.cat([self.token_before(idx), idx], 1)[:, T:]
        self.length += idx.size(1)


class LSTM(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.args = args
        hidden = args.n_hidden or args.n_embd
        self.embedding = nn.Embedding(args.vocab_size, args.n_embd, padding_idx=args.pad_id)
        self.drop = nn.Dropout(args.dropout)
        self.lstm = nn.LSTM(args.n_embd, hidden, args.n_layer, batch_first=True,
                            dropout=args.dropout if args.n_layer > 1 else 0.0)
        self.head = nn.Linear(hidden, args.vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        if hidden == args.n_embd:
            self.head.weight = self.embedding.weight  # tied (Press & Wolf 2017) when the sizes agree
        else:
            nn.init.uniform_(self.head.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)
        if args.pad_id is not None:
            with torch.no_grad():
                self.embedding.weight[args.pad_id].zero_()

    def init_hidden(self, batch_size, device=None):
        """Zero state (h, c), each (L, B, H): the start of a stream."""
        hidden = self.args.n_hidden or self.args.n_embd
        zeros = torch.zeros(self.args.n_layer, batch_size, hidden, device=device)
        return zeros, zeros.clone()

    def forward(self, idx, hidden, *, positions=None):
        """idx (B, T), hidden (h, c) -> logits (B, T, V), the hidden state after the last token.

        positions (B, T), optional: where a position is 0 a new document starts, and that row's state is reset
        to zeros before it, so no document reads another's state (packing, padding).
        """
        x = self.drop(self.embedding(idx))       # (B, T, C)
        if positions is None:
            out, hidden = self.lstm(x, hidden)   # (B, T, H)
            return self.head(self.drop(out)), hidden
        # One LSTM call per stretch of columns in which no row starts a document; between stretches, the rows
        # that start one are zeroed. The split points are read on the host: the recurrence is sequential anyway.
        is_start = positions == 0                                               # (B, T)
        cuts = torch.nonzero(is_start.any(0)).flatten().tolist()
        bounds = sorted({0, *cuts, idx.shape[1]})
        outs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            hidden = tuple(h.masked_fill(is_start[:, a][None, :, None], 0) for h in hidden)  # (L, B, H)
            out, hidden = self.lstm(x[:, a:b], hidden)
            outs.append(out)
        return self.head(self.drop(torch.cat(outs, dim=1))), hidden


MODELS = dict(zip(MODEL_TYPES, (GPT, LSTM)))


def build_model(args):
    """The model named by args.model_type, freshly initialized."""
    if args.model_type not in MODELS:
        raise ValueError(f"unknown model_type {args.model_type!r}; known: {', '.join(MODELS)}")
    return MODELS[args.model_type](args)
