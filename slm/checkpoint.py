"""Checkpoints: one self-contained file that sample.py can generate from and train.py can resume from.

A checkpoint is a dict of tensors and plain Python values only, so it loads with weights_only=True:

    format_version   int, bumped when the layout changes
    model_args       dict of model.ModelArgs (model_type, vocab_size, sizes, the GPT's recipe options)
    model            state_dict of the uncompiled, unwrapped module
    optimizer        AdamW state_dict (moments, step counts); with --optimizer=muon {'muon': ..., 'adamw': ...}
    iter_num, best_val_loss
    config           dict of the training config that produced it
    tokenizer        tokenizer.to_meta(): enough to encode prompts and decode samples
    data             what evaluation needs to know of the data (tokens and characters of the val split)
    rng              torch (CPU and accelerator), numpy and python RNG states (under torchrun process 0's, and
                     the others' in other_processes), the batch source's position, the LSTM's hidden state
                     (of all its streams, whatever process carried them)
    scaler, step_losses   the float16 loss scaler's state; the losses of the steps since the last log line
    digest           sha256 of everything above, checked on load

torch.load does not check the CRCs of the zip archive it reads, so a flipped bit inside a tensor would load
as a silently wrong weight; the digest turns that into an error.
"""
import dataclasses
import hashlib
import json
import os
import random

import numpy as np
import torch

from configurator import UserError
import model as model_module
from slm import storage
from slm import tokenizer as tok


FORMAT_VERSION = 2  # 2: digest, numpy/python/accelerator RNG states, scaler, step_losses
REQUIRED = ('format_version', 'model_args', 'model', 'tokenizer', 'digest')

LATEST, BEST = 'ckpt.pt', 'best.pt'  # in a run's out_dir: its latest checkpoint, and the one of its lowest val loss
CHECKPOINTS = (LATEST, BEST)


def path_to_read(out_dir, path=''):
    """The checkpoint a command reads from a run: path if one is given, else out_dir's best.pt where there is
    one, else its ckpt.pt."""
    if path:
        return path
    best = os.path.join(out_dir, BEST)
    return best if os.path.exists(best) else os.path.join(out_dir, LATEST)



def save(path, checkpoint):
    """Write the checkpoint atomically: a crash leaves the previous file or this one, never a torn one."""
    checkpoint = _to_cpu(dict(checkpoint, format_version=FORMAT_VERSION))
    checkpoint['digest'] = digest(checkpoint)
    with storage.atomic_write(path) as f:
        torch.save(checkpoint, f)


def load(path, map_location='cpu'):
    """Read and check a checkpoint; anything that is not one of ours, whole, is a one-line UserError."""
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory: give a checkpoint file (e.g. {os.path.join(path, LATEST)})")
    if not os.path.exists(path):
        raise UserError(f"checkpoint {path} not found: train one first (python train.py ...) or fix the path")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load fails in many ways (a legacy-pickle KeyError among them) on bad bytes
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"{path} is not a readable checkpoint (truncated, corrupted or not ours): {reason}")
    if not isinstance(checkpoint, dict) or 'format_version' not in checkpoint:
        raise UserError(f"{path} is a torch file but not a checkpoint of this project (no format_version)")
    if checkpoint['format_version'] != FORMAT_VERSION:  # before the keys: an older format lacks newer ones
        raise UserError(f"{path} has checkpoint format {checkpoint['format_version']}, this code reads"
                        f" format {FORMAT_VERSION}: use the matching version of the code")
    if any(key not in checkpoint for key in REQUIRED) or not all(
            isinstance(checkpoint[key], dict) for key in ('model_args', 'model', 'tokenizer')):
        raise UserError(f"{path} is a torch file but not a checkpoint of this project (keys missing or wrong)")
    if digest(checkpoint) != checkpoint['digest']:
        raise UserError(f"{path} is corrupted (its contents do not match the sha256 saved with them):"
                        f" use another checkpoint, e.g. best.pt or ckpt.pt beside it")
    model_type = checkpoint['model_args'].get('model_type')
    if model_type not in model_module.MODELS:
        raise UserError(f"{path} holds an unknown model type {model_type!r}")
    if checkpoint['tokenizer'].get('kind') not in tok.TOKENIZERS:
        raise UserError(f"{path} holds an unknown tokenizer kind {checkpoint['tokenizer'].get('kind')!r}")
    checkpoint['model_args'] = upgraded_args(checkpoint['model_args'])
    check_weights_fit(path, checkpoint)
    return checkpoint


def upgraded_args(model_args):
    """A checkpoint's model_args with every option it predates filled in: a recipe option with GPT-2's value (what
    the GPT was trained with before the option existed), any other with its default. An older checkpoint so
    loads, samples and resumes as the model it was."""
    return {**dataclasses.asdict(model_module.ModelArgs()), **model_module.gpt2_recipe(), **model_args}


def check_weights_fit(path, checkpoint):
    """Raise a UserError unless the checkpoint's weights have the names and shapes of the model its model_args
    describe (built on the meta device: shapes only, no memory, no initialization)."""
    try:
        with torch.device('meta'):
            expected = model_module.build_model(model_module.ModelArgs(**checkpoint['model_args'])).state_dict()
    except (TypeError, ValueError, AssertionError, ZeroDivisionError, RuntimeError) as error:
        raise UserError(f"{path} holds model_args that describe no model ({error}): use another checkpoint")
    shapes = {name: tuple(tensor.shape) for name, tensor in checkpoint['model'].items()}
    wanted = {name: tuple(tensor.shape) for name, tensor in expected.items()}
    if shapes != wanted:
        name = next(n for n in sorted({*shapes, *wanted}) if shapes.get(n) != wanted.get(n))
        raise UserError(f"{path} is inconsistent: its weights do not fit the model its model_args describe ({name}:"
                        f" {shapes.get(name)} in the weights, {wanted.get(name)} by the model_args): use another"
                        f" checkpoint")


def restore_model(checkpoint):
    """The model a checkpoint describes, with its weights loaded, on the CPU."""
    args = model_module.ModelArgs(**checkpoint['model_args'])
    model = model_module.build_model(args)
    model.load_state_dict(checkpoint['model'])
    return model


def digest(checkpoint):
    """sha256 of every value of a checkpoint but its digest: tensors by dtype, shape and bytes, others by repr."""
    sha = hashlib.sha256()

    def walk(value):
        if isinstance(value, torch.Tensor):
            sha.update(f'{value.dtype}{tuple(value.shape)}'.encode())
            sha.update(value.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
        elif isinstance(value, dict):
            for key, item in value.items():
                sha.update(repr(key).encode())
                walk(item)
        elif isinstance(value, (list, tuple)):
            sha.update(f'{type(value).__name__}{len(value)}'.encode())
            for item in value:
                walk(item)
        else:
            sha.update(repr(value).encode())
    walk({k: v for k, v in checkpoint.items() if k != 'digest'})
    return sha.hexdigest()


def estimated_size(model, tokenizer_meta):
    """Bytes a training checkpoint of model takes, roughly: the weights, AdamW's two moments, the vocabulary."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return 3 * weights + len(json.dumps(tokenizer_meta)) + (1 << 20)


def seed_everything(seed):
    """Seed every global RNG a run may draw from, so that a run is a function of its seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # the CPU's and every accelerator's


def global_rng_state(device):
    """The states of the global RNGs any code in a training run may draw from: torch (and the accelerator's),
    numpy and python. Plain values and tensors, so the checkpoint still loads with weights_only=True."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state['state']['key'] = numpy_state['state']['key'].tolist()  # a list of ints, not a numpy array
    state = {'torch': torch.get_rng_state(), 'python': random.getstate(), 'numpy': numpy_state}
    if torch.device(device).type in ('cuda', 'mps'):
        state['device'] = torch.get_device_module(device).get_rng_state(device)
    return state


def restore_global_rng_state(state, device):
    """Put the global RNGs back where global_rng_state found them (the accelerator's only on the same kind)."""
    torch.set_rng_state(state['torch'])
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    if 'device' in state and torch.device(device).type in ('cuda', 'mps'):
        torch.get_device_module(device).set_rng_state(state['device'], device)


def _to_cpu(value):
    """A nested checkpoint value with its tensors on the CPU (moved once, then hashed and saved from there)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value
