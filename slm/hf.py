"""Our GPT and tokenizers in Hugging Face's terms: the architecture of transformers that computes what our GPT
computes, the weights renamed both ways, and our tokenizers as `tokenizers` objects. export.py writes a model
directory with it; train.py --init_from=DIR reads one. Only these two paths import transformers.

    our GPT's recipe                                       transformers
    learned positions, LayerNorm, GELU (exact or tanh), relu2  GPT2LMHeadModel (Conv1D weights: ours transposed)
    rotary, LayerNorm, GELU (exact or tanh), relu2         GPTNeoXForCausalLM (sequential residual, rotary on
                                                           every channel; q, k, v interleaved per head)
    rotary, RMSNorm, SwiGLU, qk_norm, no biases            Qwen3ForCausalLM
    rotary, RMSNorm, SwiGLU, no qk_norm                    LlamaForCausalLM

Both rotate q and k the same way (channel i with i + head_size / 2, RoFormer's wavelengths from ROPE_BASE), and
Qwen3 normalizes each head's q and k before the rotation, as ours does. Our RMSNorm's eps is torch's default,
the float32 epsilon, so the exported configs carry that value. GPT-2 and GPT-NeoX have biases everywhere: a GPT
of ours without them exports zeros there. Anything else (RMSNorm with learned positions or a plain MLP, qk_norm
without RMSNorm and SwiGLU, SwiGLU with LayerNorm, the LSTM) is refused: no standard architecture computes it.
"""
import json
import os

import torch

from configurator import UserError
import model as model_module
from slm import tokenizer as tok


RMS_NORM_EPS = torch.finfo(torch.float32).eps  # nn.RMSNorm(eps=None) in float32, as the exported model runs
LAYER_NORM_EPS = 1e-5                           # nn.LayerNorm's default, which ours use
# the recipe options the architectures below express (zero_init_proj: an initialization, nothing to express)
EXPRESSED = ('rope', 'norm', 'qk_norm', 'mlp', 'zero_init_proj', 'tie_head')
ACTIVATIONS = {'gelu': 'gelu', 'gelu_tanh': 'gelu_pytorch_tanh', 'relu2': 'relu2'}  # plain MLPs: transformers' names
SUPPORTED = ("LayerNorm with a plain MLP (gelu, gelu_tanh or relu2) and --qk_norm=False, with learned positions"
             " (GPT-2) or rotary ones (GPT-NeoX); and rotary + RMSNorm + SwiGLU (Llama; with --qk_norm and no"
             " biases, Qwen3)")


def architecture(args):
    """'gpt2', 'gpt_neox', 'qwen3' or 'llama': the transformers architecture that computes the GPT args
    describe; else a UserError that says what has no standard equivalent."""
    if args.model_type != 'gpt':
        raise UserError(f"the {args.model_type} model: no standard transformers architecture expresses it;"
                        f" export supports the GPT: {SUPPORTED}")
    unknown = [f'--{k}={getattr(args, k)}' for k, gpt2 in model_module.gpt2_recipe().items()
               if k not in EXPRESSED and getattr(args, k) != gpt2]
    if unknown:
        raise UserError(f"this GPT ({', '.join(unknown)}): no standard transformers architecture that export knows"
                        f" expresses it; export supports {SUPPORTED}")
    if args.norm == 'layernorm' and args.mlp in ACTIVATIONS and not args.qk_norm:
        return 'gpt_neox' if args.rope else 'gpt2'
    if args.rope and args.norm == 'rmsnorm' and args.mlp == 'swiglu' and not (args.qk_norm and args.bias):
        return 'qwen3' if args.qk_norm else 'llama'
    recipe = (f"rope={args.rope}, norm={args.norm}, mlp={args.mlp}, qk_norm={args.qk_norm}, bias={args.bias}")
    raise UserError(f"this GPT ({recipe}): no standard transformers architecture that export knows expresses that"
                    f" combination; export supports {SUPPORTED}")


def hf_config(args, special_ids):
    """The transformers config of the GPT args describe (the architecture's), with the tokenizer's special ids."""
    import transformers
    ids = dict(bos_token_id=special_ids.get('bos'), eos_token_id=special_ids.get('eos'),
               pad_token_id=special_ids.get('pad'), tie_word_embeddings=args.tie_head)
    kind = architecture(args)
    if kind == 'gpt2':
        return transformers.GPT2Config(
            vocab_size=args.vocab_size, n_positions=args.block_size, n_embd=args.n_embd, n_layer=args.n_layer,
            n_head=args.n_head, n_inner=4 * args.n_embd, activation_function=ACTIVATIONS[args.mlp],
            resid_pdrop=args.dropout, embd_pdrop=args.dropout, attn_pdrop=args.dropout,
            layer_norm_epsilon=LAYER_NORM_EPS, **ids)
    if kind == 'gpt_neox':
        return transformers.GPTNeoXConfig(
            vocab_size=args.vocab_size, hidden_size=args.n_embd, num_hidden_layers=args.n_layer,
            num_attention_heads=args.n_head, intermediate_size=4 * args.n_embd, hidden_act=ACTIVATIONS[args.mlp],
            max_position_embeddings=args.block_size, layer_norm_eps=LAYER_NORM_EPS, use_parallel_residual=False,
            attention_bias=True, hidden_dropout=args.dropout, attention_dropout=args.dropout,
            rope_parameters={'rope_type': 'default', 'rope_theta': model_module.ROPE_BASE,
                             'partial_rotary_factor': 1.0}, **ids)
    shape = dict(vocab_size=args.vocab_size, hidden_size=args.n_embd,
                 intermediate_size=model_module.mlp_hidden(args),
                 num_hidden_layers=args.n_layer, num_attention_heads=args.n_head, num_key_value_heads=args.n_head,
                 head_dim=args.n_embd // args.n_head, hidden_act='silu', max_position_embeddings=args.block_size,
                 rms_norm_eps=RMS_NORM_EPS, attention_bias=args.bias, attention_dropout=args.dropout,
                 rope_parameters={'rope_type': 'default', 'rope_theta': model_module.ROPE_BASE}, **ids)
    if kind == 'qwen3':
        return transformers.Qwen3Config(**shape)
    return transformers.LlamaConfig(**shape, mlp_bias=args.bias)


def _layer_names(kind):
    """Our name in a block -> (the HF name in layer i, is it a GPT-2 Conv1D weight, stored transposed)."""
    if kind == 'gpt2':
        return {'ln_1.weight': 'ln_1.weight', 'ln_1.bias': 'ln_1.bias', 'ln_2.weight': 'ln_2.weight',
                'ln_2.bias': 'ln_2.bias', 'attn.qkv.weight': 'attn.c_attn.weight', 'attn.qkv.bias': 'attn.c_attn.bias',
                'attn.proj.weight': 'attn.c_proj.weight', 'attn.proj.bias': 'attn.c_proj.bias',
                'mlp.up.weight': 'mlp.c_fc.weight', 'mlp.up.bias': 'mlp.c_fc.bias',
                'mlp.down.weight': 'mlp.c_proj.weight', 'mlp.down.bias': 'mlp.c_proj.bias'}
    return {'ln_1.weight': 'input_layernorm.weight', 'ln_2.weight': 'post_attention_layernorm.weight',
            'attn.q_norm.weight': 'self_attn.q_norm.weight', 'attn.k_norm.weight': 'self_attn.k_norm.weight',
            'attn.proj.weight': 'self_attn.o_proj.weight', 'attn.proj.bias': 'self_attn.o_proj.bias',
            'mlp.down.weight': 'mlp.down_proj.weight', 'mlp.down.bias': 'mlp.down_proj.bias'}


def bias(state_dict, name):
    """state_dict's bias name, or zeros of its weight's output size where our GPT has none (--bias=False): GPT-2
    and GPT-NeoX always have one."""
    if name in state_dict:
        return state_dict[name]
    return torch.zeros(state_dict[name.removesuffix('.bias') + '.weight'].shape[0])


def to_gpt_neox(args, state_dict):
    """Our GPT's weights as GPTNeoXForCausalLM's: its fused query_key_value holds each head's q, k and v
    together ((n_head, 3, head_size) rows, ours (3, n_head, head_size)), and every bias (zeros where we have
    none)."""
    C, H = args.n_embd, args.n_head
    out = {'gpt_neox.embed_in.weight': state_dict['wte.weight'], 'gpt_neox.final_layer_norm.weight':
           state_dict['ln_f.weight'], 'gpt_neox.final_layer_norm.bias': bias(state_dict, 'ln_f.bias')}
    if not args.tie_head:
        out['lm_head.weight'] = state_dict['lm_head.weight']
    for i in range(args.n_layer):
        ours, theirs = f'blocks.{i}.', f'gpt_neox.layers.{i}.'
        qkv_weight, qkv_bias = state_dict[ours + 'attn.qkv.weight'], bias(state_dict, ours + 'attn.qkv.bias')
        out.update({
            theirs + 'input_layernorm.weight': state_dict[ours + 'ln_1.weight'],
            theirs + 'input_layernorm.bias': bias(state_dict, ours + 'ln_1.bias'),
            theirs + 'post_attention_layernorm.weight': state_dict[ours + 'ln_2.weight'],
            theirs + 'post_attention_layernorm.bias': bias(state_dict, ours + 'ln_2.bias'),
            theirs + 'attention.query_key_value.weight':
                qkv_weight.view(3, H, C // H, C).transpose(0, 1).reshape(3 * C, C).contiguous(),
            theirs + 'attention.query_key_value.bias': qkv_bias.view(3, H, C // H).transpose(0, 1).reshape(3 * C),
            theirs + 'attention.dense.weight': state_dict[ours + 'attn.proj.weight'],
            theirs + 'attention.dense.bias': bias(state_dict, ours + 'attn.proj.bias'),
            theirs + 'mlp.dense_h_to_4h.weight': state_dict[ours + 'mlp.up.weight'],
            theirs + 'mlp.dense_h_to_4h.bias': bias(state_dict, ours + 'mlp.up.bias'),
            theirs + 'mlp.dense_4h_to_h.weight': state_dict[ours + 'mlp.down.weight'],
            theirs + 'mlp.dense_4h_to_h.bias': bias(state_dict, ours + 'mlp.down.bias')})
    return out


def to_hf_state_dict(args, state_dict):
    """Our GPT's weights under the names and layouts of its transformers architecture (tied head: once)."""
    kind = architecture(args)
    if kind == 'gpt_neox':
        return to_gpt_neox(args, state_dict)
    prefix, layers = ('transformer.', 'transformer.h.') if kind == 'gpt2' else ('model.', 'model.layers.')
    names = _layer_names(kind)
    out = {prefix + ('wte.weight' if kind == 'gpt2' else 'embed_tokens.weight'): state_dict['wte.weight'],
           prefix + ('ln_f.weight' if kind == 'gpt2' else 'norm.weight'): state_dict['ln_f.weight']}
    if kind == 'gpt2':
        out['transformer.wpe.weight'] = state_dict['wpe.weight']
        out['transformer.ln_f.bias'] = bias(state_dict, 'ln_f.bias')
    if not args.tie_head:
        out['lm_head.weight'] = state_dict['lm_head.weight']
    for i in range(args.n_layer):
        ours = {name[len(f'blocks.{i}.'):]: w for name, w in state_dict.items() if name.startswith(f'blocks.{i}.')}
        if kind == 'gpt2':  # GPT-2 has every bias: ours, or zeros where we have none
            for name in names:
                w = bias(ours, name) if name.endswith('.bias') else ours[name]
                out[f'{layers}{i}.{names[name]}'] = w.t().contiguous() if w.dim() == 2 else w
            continue
        for name, w in ours.items():
            if name.startswith('attn.qkv.'):  # (3C, ...) -> q, k, v
                for part, piece in zip('qkv', w.chunk(3, dim=0)):
                    out[f'{layers}{i}.self_attn.{part}_proj.{name.split(".")[-1]}'] = piece.contiguous()
            elif name.startswith('mlp.up.'):  # (2H, ...) -> gate (first half), up
                gate, up = w.chunk(2, dim=0)
                out[f'{layers}{i}.mlp.gate_proj.{name.split(".")[-1]}'] = gate.contiguous()
                out[f'{layers}{i}.mlp.up_proj.{name.split(".")[-1]}'] = up.contiguous()
            else:
                out[f'{layers}{i}.{names[name]}'] = w
    return out


def hf_model(checkpoint):
    """The transformers model (float32, eval mode) that computes what the checkpoint's GPT computes."""
    import transformers
    args = model_module.ModelArgs(**checkpoint['model_args'])
    config = hf_config(args, checkpoint['tokenizer'].get('special_ids', {}))
    model = transformers.AutoModelForCausalLM.from_config(config)
    weights = to_hf_state_dict(args, checkpoint['model'])
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [name for name in missing if not (args.tie_head and name == 'lm_head.weight')]
    if missing or unexpected:  # a programming error: the name tables above are wrong
        raise RuntimeError(f"weights do not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}")
    if args.tie_head:
        model.tie_weights()
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# reading a Hugging Face directory into our GPT (train.py --init_from=DIR)

def read_pretrained(directory):
    """(ModelArgs of its shape, our GPT's state_dict) of a local Hugging Face model directory of GPT-2's
    architecture (config.json, and model.safetensors, its shards or pytorch_model.bin)."""
    path = os.path.join(directory, 'config.json')
    if not os.path.isdir(directory) or not os.path.exists(path):
        raise UserError(f"--init_from={directory}: not a Hugging Face model directory (no config.json): give"
                        f" scratch, resume, or a directory saved by transformers' save_pretrained")
    import transformers
    try:
        config = transformers.AutoConfig.from_pretrained(directory)
    except (ValueError, OSError) as error:  # an unknown model_type, unreadable JSON
        raise UserError(f"--init_from={directory}: transformers cannot read its config.json"
                        f" ({str(error).splitlines()[0]})")
    if config.model_type != 'gpt2':
        raise UserError(f"--init_from={directory} holds a {config.model_type} model: train.py reads GPT-2's"
                        f" architecture (GPT2LMHeadModel) only")
    activation = {'gelu': 'gelu', 'gelu_new': 'gelu_tanh', 'gelu_pytorch_tanh': 'gelu_tanh', 'relu2': 'relu2'}.get(
        config.activation_function)
    inner = config.n_inner or 4 * config.n_embd
    exact = (activation and inner == 4 * config.n_embd and config.layer_norm_epsilon == LAYER_NORM_EPS
             and config.scale_attn_weights and not config.scale_attn_by_inverse_layer_idx)
    if not exact:
        raise UserError(f"--init_from={directory}: this GPT-2 config (activation {config.activation_function},"
                        f" n_inner {inner}, layer_norm_epsilon {config.layer_norm_epsilon}) is not one our GPT"
                        f" computes: it needs gelu/gelu_new/relu2, n_inner 4 x n_embd and eps {LAYER_NORM_EPS}")
    hf_weights = read_weights(directory)
    tied = config.tie_word_embeddings or 'lm_head.weight' not in hf_weights
    shape = dict(vocab_size=config.vocab_size, block_size=config.n_positions, n_layer=config.n_layer,
                 n_embd=config.n_embd, n_head=config.n_head, bias=True)
    args = model_module.ModelArgs(**{**model_module.gpt2_recipe(), 'mlp': activation, 'tie_head': tied}, **shape)
    names = _layer_names('gpt2')
    missing = [name for name in ('transformer.wte.weight', *(f'transformer.h.{i}.{n}' for i in range(config.n_layer)
                                                            for n in names.values())) if name not in hf_weights]
    if missing:
        raise UserError(f"--init_from={directory} lacks weights its config.json describes ({missing[0]}, ...)")
    ours = {name: hf_weights[f'transformer.{name}'] for name in ('wte.weight', 'wpe.weight', 'ln_f.weight',
                                                                   'ln_f.bias')}
    ours['lm_head.weight'] = hf_weights['transformer.wte.weight' if tied else 'lm_head.weight']
    for i in range(config.n_layer):
        for name, hf_name in names.items():
            w = hf_weights[f'transformer.h.{i}.{hf_name}']
            ours[f'blocks.{i}.{name}'] = w.t().contiguous() if w.dim() == 2 else w
    return args, {name: w.float() for name, w in ours.items()}


def read_weights(directory):
    """{name: tensor} of a GPT-2 directory's weights (model.safetensors, its shards, or pytorch_model.bin), the
    names as GPT2LMHeadModel's (files saved from GPT2Model lack the 'transformer.' prefix)."""
    from safetensors.torch import load_file
    path = os.path.join(directory, 'model.safetensors')
    index = path + '.index.json'
    if os.path.exists(path):
        weights = load_file(path)
    elif os.path.exists(index):
        with open(index, encoding='utf-8') as f:
            shards = sorted(set(json.load(f)['weight_map'].values()))
        weights = {k: v for shard in shards for k, v in load_file(os.path.join(directory, shard)).items()}
    elif os.path.exists(bin_path := os.path.join(directory, 'pytorch_model.bin')):
        weights = torch.load(bin_path, map_location='cpu', weights_only=True)
    else:
        raise UserError(f"--init_from={directory} has no weights: model.safetensors or pytorch_model.bin")
    return {(k if k.startswith(('transformer.', 'lm_head.')) else 'transformer.' + k): v for k, v in weights.items()}


# ---------------------------------------------------------------------------------------------------------
# tokenizers

def _byte_level_bpe(ranks, pattern, specials=()):
    """A `tokenizers` BPE over bytes (GPT-2's byte-to-character mapping) that merges as tiktoken does with
    ranks {bytes: id}: the merges of each token, in the order of its id, from every split into two tokens.
    specials: the tokens of ids 0, 1, ... (which ranks leave free)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    to_char = bytes_to_unicode()  # GPT-2's printable character for each byte, as ByteLevel reads them
    spell = lambda token: ''.join(to_char[b] for b in token)
    vocab = {**{special: i for i, special in enumerate(specials)},
             **{spell(token): rank for token, rank in ranks.items()}}
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) < 2:
            continue
        splits = [(token[:k], token[k:]) for k in range(1, len(token))
                  if ranks.get(token[:k], rank) < rank and ranks.get(token[k:], rank) < rank]
        merges.extend((spell(a), spell(b)) for a, b in sorted(splits, key=lambda s: (ranks[s[0]], ranks[s[1]])))
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior='isolated', invert=False),
        ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.decoder = decoders.ByteLevel()
    return bpe


def hf_tokenizer(meta):
    """(a transformers PreTrainedTokenizerFast that encodes as ours, or None, a line saying what is exported)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    tokenizer = tok.from_meta(meta)
    kind = meta['kind']
    specials = {}
    if kind == 'bpe':
        encoding = tokenizer.encoding
        backend = _byte_level_bpe(encoding._mergeable_ranks, encoding._pat_str)
        eot = encoding.decode_single_token_bytes(tokenizer.eot_id).decode()
        backend.add_special_tokens([AddedToken(eot, special=True)])
        specials = dict(bos_token=eot, eos_token=eot, unk_token=eot)
    elif kind == 'learned_bpe':
        backend = _byte_level_bpe(tokenizer.encoding._mergeable_ranks, tokenizer.pattern,
                                  specials=tok.SPECIALS)
    elif kind == 'char':
        vocab = {token: i for i, token in enumerate(tokenizer.vocab)}
        backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=tok.SPECIALS[tok.UNK_ID]))
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(r'[\s\S]'), behavior='isolated')
        backend.decoder = decoders.Fuse()
    else:
        what = {'word': "the word tokenizer (whole pieces, else their characters) has no exact standard"
                        " equivalent", 'midi': "the midi tokenizer encodes music, not text"}[kind]
        return None, f"tokenizer not exported: {what}; the model is (feed it our token ids)"
    if kind != 'bpe':
        backend.add_special_tokens([AddedToken(s, special=True) for s in tok.SPECIALS])
        bos = tok.SPECIALS[tok.BOS_ID]  # a text starts as our documents (and sample.py's prompts) do: after <s>
        backend.post_processor = processors.TemplateProcessing(single=f'{bos} $A', pair=f'{bos} $A $B',
                                                               special_tokens=[(bos, tok.BOS_ID)])
        specials = dict(unk_token=tok.SPECIALS[tok.UNK_ID], bos_token=tok.SPECIALS[tok.BOS_ID],
                        eos_token=tok.SPECIALS[tok.EOS_ID], pad_token=tok.SPECIALS[tok.PAD_ID])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=backend, clean_up_tokenization_spaces=False, **specials)
    return wrapped, f"tokenizer exported ({kind}): AutoTokenizer loads it"


def write_tokenizer(meta, directory):
    """Write the tokenizer's files into directory where transformers can express it; return a line saying
    what was written."""
    wrapped, line = hf_tokenizer(meta)
    if wrapped is not None:
        wrapped.save_pretrained(directory)
    return line
