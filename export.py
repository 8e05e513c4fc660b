"""Export a checkpoint as a Hugging Face model directory: transformers loads it with no code of ours.

    python export.py --out_dir=out-akjv-char --to=exports/akjv-char
    python -c "from transformers import AutoModelForCausalLM as M; M.from_pretrained('exports/akjv-char')"

The directory holds config.json (GPT2LMHeadModel for the GPT-2 recipe; Qwen3ForCausalLM or LlamaForCausalLM for
rotary + RMSNorm + SwiGLU, see hf.py), model.safetensors (a tied head stored once), generation_config.json and,
where a standard tokenizer encodes exactly as ours, tokenizer.json with tokenizer_config.json, and README.md, the
model card the Hub shows (slm/model_card.py). What has no
standard equivalent (the LSTM, relu2, LayerNorm with rotary, ...) is one line and exit code 2.
"""
import dataclasses
import os

import transformers

from configurator import UserError, parse, run
from slm import checkpoint, hf, storage
from slm.model_card import model_card


@dataclasses.dataclass
class ExportConfig:
    out_dir: str = 'out'          # where train.py wrote its checkpoints
    checkpoint: str = ''          # a checkpoint file ('' = out_dir/best.pt, else out_dir/ckpt.pt)
    to: str = ''                  # the Hugging Face model directory to write (new, or empty)


def check_destination(to):
    if not to:
        raise UserError("--to is missing: give the directory to write, e.g. --to=exports/NAME")
    if os.path.exists(to) and not os.path.isdir(to):
        raise UserError(f"--to={to} is a file: give a new or empty directory")
    if os.path.isdir(to) and os.listdir(to):
        raise UserError(f"--to={to} is not empty: give a new or empty directory (nothing is overwritten)")


def export(cfg):
    """Write the checkpoint's model (and tokenizer, where expressible) into cfg.to; return the lines said."""
    check_destination(cfg.to)
    transformers.utils.logging.disable_progress_bar()  # export says what it wrote in its own lines
    path = checkpoint.path_to_read(cfg.out_dir, cfg.checkpoint)
    loaded = checkpoint.load(path)
    model = hf.hf_model(loaded)  # a UserError for a model with no standard equivalent, before anything is written
    os.makedirs(cfg.to, exist_ok=True)
    model.save_pretrained(cfg.to, safe_serialization=True)
    lines = [f"{path} -> {cfg.to}: {type(model).__name__} (config.json, model.safetensors)",
             hf.write_tokenizer(loaded['tokenizer'], cfg.to)]
    with storage.atomic_write(os.path.join(cfg.to, 'README.md')) as f:
        f.write(model_card(loaded, type(model).__name__, cfg.to).encode('utf-8'))
    lines.append(f"model card: {os.path.join(cfg.to, 'README.md')}")
    for line in lines:
        print(line)
    return lines


def main(argv=None):
    return export(parse(ExportConfig, argv))


if __name__ == '__main__':
    run(main)
