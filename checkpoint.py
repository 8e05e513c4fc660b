"""Checkpoints: one self-contained file that sample.py can generate from and train.py can resume from.

A checkpoint is a dict of tensors and plain Python values only, so it loads with weights_only=True:

    format_version   int, bumped when the layout changes
    model_args       dict of model.ModelArgs (model_type, vocab_size, sizes)
    model            state_dict of the uncompiled, unwrapped module
    optimizer        AdamW state_dict (moments, step counts)
    iter_num, best_val_loss
    config           dict of the training config that produced it
    tokenizer        tokenizer.to_meta(): enough to encode prompts and decode samples
    data             what evaluation needs to know of the data (tokens and characters of the val split)
    rng              torch, numpy and python RNG states, and the batch source's position
"""
import os

import torch

import model as model_module
import storage
import tokenizer as tok
from configurator import UserError

FORMAT_VERSION = 1
REQUIRED = ('format_version', 'model_args', 'model', 'tokenizer')


def save(path, checkpoint):
    """Write the checkpoint atomically: a crash leaves the previous file or this one, never a torn one."""
    with storage.atomic_write(path) as f:
        torch.save(dict(checkpoint, format_version=FORMAT_VERSION), f)


def load(path, map_location='cpu'):
    """Read and check a checkpoint; anything that is not one of ours, whole, is a one-line UserError."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory: give a checkpoint file (e.g. {os.path.join(path, 'ckpt.pt')})")
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path} not found: train one first (python train.py ...) or fix the path")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load fails in many ways (a legacy-pickle KeyError among them) on bad bytes
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} is not a readable checkpoint (truncated, corrupted or not ours): {reason}")
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in REQUIRED):
        raise UserError(f"{path} is a torch file but not a checkpoint of this project (keys missing)")
    if checkpoint['format_version'] != FORMAT_VERSION:
        raise UserError(f"{path} has checkpoint format {checkpoint['format_version']}, this code reads"
                        f" format {FORMAT_VERSION}: use the matching version of the code")
    model_type = checkpoint['model_args'].get('model_type')
    if model_type not in model_module.MODELS:
        raise UserError(f"{path} holds an unknown model type {model_type!r}")
    if checkpoint['tokenizer'].get('kind') not in tok.TOKENIZERS:
        raise UserError(f"{path} holds an unknown tokenizer kind {checkpoint['tokenizer'].get('kind')!r}")
    return checkpoint


def restore_model(checkpoint):
    """The model a checkpoint describes, with its weights loaded, on the CPU."""
    args = model_module.ModelArgs(**checkpoint['model_args'])
    model = model_module.build_model(args)
    model.load_state_dict(checkpoint['model'])
    return model
