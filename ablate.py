"""Train the same model several ways and compare the runs on the same held-out documents with the same metric.

    python ablate.py config/train_akjv_char.py --what=windowing           # every windowing strategy, AKJV
    python ablate.py config/train_akjv.py --windowings=random,packed --target_tokens=200000
    python ablate.py config/train_tinystories_cpu.py --what=data_size     # 20K / 200K / all TinyStories stories
    python ablate.py config/train_akjv_char.py --what=dtype --max_iters=300  # float32 against bfloat16 autocast

Every run is train.py's own loop (train.train) from the same seed, so from the same initial weights, and learns
the same number of real target tokens: padding and pairs across a document boundary do not count, so a
windowing that pads runs more iterations, with the config's learning-rate schedule stretched to fit them
(warmup the same share of every run, the cosine ending at its last iteration). One metric scores every run:
batching.evaluation_windows cuts each held-out document into block_size chunks, and the loss is the mean over
every real target of every document (nats per target), and the same total in bits per character of those
documents. A run is scored at --points evenly spaced points of its training; between them it resumes its own
checkpoint, which continues exactly, so the curve is the one an uninterrupted run would draw.

Writes to <out_dir>-ablate-<what>/ (or --ablation_dir): results.md (the table), results.json, ablation.png
(bits per character against target tokens and against training time), and one train.py out_dir per run.
A run whose directory holds the results of the same settings is not trained again.
"""
import dataclasses
import json
import math
import os
import time

import torch

import batching
import checkpoint
import configurator
import runtime
import storage
import tokenizer as tok
import train
from configurator import UserError, option, parse, run

DATA_SIZE_DIRS = 'data/tinystories_20k,data/tinystories_200k,data/tinystories'
UNKNOWN_WINDOWINGS = '--windowings: unknown {bad}; choose from {choices}'
DATA_SIZE_PREPARE = {'data/tinystories_20k': ' --max_docs=20000', 'data/tinystories_200k': ' --max_docs=200000'}


@dataclasses.dataclass
class AblateConfig(train.TrainConfig):
    what: str = option('windowing', choices=('windowing', 'data_size', 'dtype'))  # what differs between the
    #                               runs: a run per --windowings, per --data_dirs or per --dtypes
    windowings: str = option('', choices=('',), some_of=batching.WINDOWINGS, error=UNKNOWN_WINDOWINGS)
    #                               windowing: strategies to compare, comma-separated ('' = all that suit a model)
    data_dirs: str = DATA_SIZE_DIRS  # data_size: prepared directories, scored on the first one's val split
    dtypes: str = option('float32,bfloat16', some_of=('auto', runtime.DTYPES))  # dtype: autocast dtypes to
    #                               compare, comma-separated (auto = train.py's default here)
    target_tokens: int = option(0, low=0)  # real target tokens per run (0 = the config's max_iters x tokens
    #                               per iteration)
    points: int = option(4, low=1)  # scores per run, evenly spaced in its training, the last at its end
    eval_documents: int = option(0, low=0)  # score on the first N held-out documents (0 = all of them)
    ablation_dir: str = ''        # where the results and runs go ('' = <out_dir>-ablate-<what>)


@dataclasses.dataclass
class Variant:
    name: str       # the table's row label
    overrides: dict  # what this run changes in the training config


def variants(cfg):
    """The runs of the ablation, checked: one per windowing strategy or per data directory."""
    if cfg.what == 'windowing':
        # streams is the LSTM's TBPTT layout: for a GPT, strided windows in a fixed order, so left out by default
        everything = [w for w in batching.WINDOWINGS if cfg.model_type == 'lstm' or w != 'streams']
        names = [w.strip() for w in cfg.windowings.split(',') if w.strip()] or everything
        return [Variant(w, {'windowing': w}) for w in names]
    if cfg.what == 'data_size':
        dirs = [d.strip() for d in cfg.data_dirs.split(',') if d.strip()]
        for d in dirs:
            if not os.path.exists(os.path.join(d, storage.META)):
                raise UserError(f"{d} is not prepared: the data-size ablation needs {', '.join(dirs)}; run"
                                f" `python prepare.py {d}{DATA_SIZE_PREPARE.get(os.path.normpath(d), '')}` first")
        return [Variant(os.path.basename(os.path.normpath(d)), {'data_dir': d}) for d in dirs]
    if cfg.what == 'dtype':
        names = [d.strip() for d in cfg.dtypes.split(',') if d.strip()]
        for name in names:
            runtime.resolve_dtype(name, 'cpu')  # raises for an unknown one
        return [Variant(name, {'dtype': name}) for name in names]
    raise UserError(f"--what={cfg.what} must be windowing, data_size or dtype")


def held_out(cfg, variant_list):
    """(documents scored, characters in them, the data directory they come from): the val split of the first
    run's data, which every run must share (same tokenizer, same val.bin)."""
    data_dirs = [v.overrides.get('data_dir', cfg.data_dir) for v in variant_list]
    metas = [storage.load_meta(d) for d in data_dirs]
    for d, meta in zip(data_dirs[1:], metas[1:]):
        if meta['tokenizer'] != metas[0]['tokenizer'] or meta['files']['val.bin'] != metas[0]['files']['val.bin']:
            raise UserError(f"{d} and {data_dirs[0]} hold different held-out documents or tokenizers: compare"
                            f" directories prepared from one source with one tokenizer (--max_docs only)")
    meta = metas[0]
    tokens, offsets = storage.open_split(data_dirs[0], 'val', meta)
    n = len(offsets) - 1 if cfg.eval_documents <= 0 else min(cfg.eval_documents, len(offsets) - 1)
    if n == len(offsets) - 1:
        chars = meta['splits']['val']['chars']
    else:  # as prepare.py counts them: each document's text, and one for the boundary its end token stands for
        decode = tok.from_meta(meta['tokenizer']).decode
        chars = sum(len(decode(tokens[offsets[i]:offsets[i + 1] - 1].tolist())) + 1 for i in range(n))
    documents = batching.Documents.from_split(tokens, offsets[:n + 1], meta['tokenizer']['special_ids'])
    return documents, chars, data_dirs[0]


def score(out_dir, documents, chars, cfg):
    """Nats per real target and bits per character of out_dir/ckpt.pt on the held-out documents."""
    ckpt = checkpoint.load(os.path.join(out_dir, 'ckpt.pt'))
    device = runtime.resolve_device(cfg.device)
    model = checkpoint.restore_model(ckpt).to(device)
    windows = batching.evaluation_windows(documents, cfg.batch_size, ckpt['model_args']['block_size'])
    # in float32 whatever a run trained in: the dtype ablation compares what training learned, scored alike
    loss = train.mean_loss(model, windows, windows.batches_per_epoch, device, torch.float32, batching.IGNORE_INDEX)
    return loss, loss * float(documents.pairs.sum()) / math.log(2) / chars


def run_variant(cfg, variant, documents, chars, budget):
    """Train one variant to the budget of real target tokens, scoring it at cfg.points points."""
    run_dir = os.path.join(cfg.ablation_dir, variant.name)
    train_fields = {f.name for f in dataclasses.fields(train.TrainConfig)}
    run_cfg = train.TrainConfig(**{k: v for k, v in dataclasses.asdict(cfg).items() if k in train_fields})
    run_cfg = dataclasses.replace(run_cfg, **variant.overrides, out_dir=run_dir, init_from='scratch')
    train.check_config(run_cfg)
    meta = storage.load_meta(run_cfg.data_dir)
    share = train.make_batches(run_cfg, train.open_documents(run_cfg.data_dir, 'train', meta), 'train',
                               run_cfg.seed).target_fraction
    tokens_per_iter = run_cfg.batch_size * run_cfg.block_size * run_cfg.gradient_accumulation_steps
    iters = max(cfg.points, round(budget / (tokens_per_iter * share)))
    # Every run gets the config's schedule shape: warmup for the same share of its iterations as the config's,
    # then the cosine down to min_lr at its own end, whatever iteration a segment stops at.
    warmup_iters = round(cfg.warmup_iters * iters / cfg.max_iters)
    run_cfg = dataclasses.replace(run_cfg, max_iters=iters, warmup_iters=warmup_iters, lr_decay_iters=iters,
                                  eval_interval=iters)
    settings = {'variant': variant.name, 'config': dataclasses.asdict(run_cfg), 'budget': budget,
                'scored_on': documents.starts.size, 'points': cfg.points}
    saved = os.path.join(run_dir, 'ablation.json')
    if os.path.exists(saved):
        with open(saved) as f:
            result = json.load(f)
        if result['settings'] == settings:
            print(f"{variant.name}: already done in {run_dir}")
            return result
    curve, train_s = [], 0.0
    for k in range(1, cfg.points + 1):
        stop = round(iters * k / cfg.points)
        started = time.perf_counter()
        train.train(dataclasses.replace(run_cfg, max_iters=stop, init_from='resume' if k > 1 else 'scratch',
                                        overwrite=True))  # a run of other settings, or cut short
        train_s += time.perf_counter() - started
        loss, bits_per_char = score(run_dir, documents, chars, cfg)
        curve.append({'iter': stop, 'target_tokens': stop * tokens_per_iter * share, 'train_s': train_s,
                      'val_loss': loss, 'val_bits_per_char': bits_per_char})
        print(f"{variant.name}: iteration {stop}/{iters}, {curve[-1]['target_tokens']:,.0f} target tokens:"
              f" val loss {loss:.4f} per target, {bits_per_char:.4f} bits/char")
    result = {'settings': settings, 'name': variant.name, 'iters': iters, 'target_share': share,
              'positions': iters * tokens_per_iter, 'target_tokens': iters * tokens_per_iter * share,
              'train_s': train_s, **{k: curve[-1][k] for k in ('val_loss', 'val_bits_per_char')}, 'curve': curve}
    with storage.atomic_write(saved, 'w') as f:
        json.dump(result, f, indent=1)
    return result


def table(results, what):
    """The results as a markdown table, best bits per character in bold."""
    best = min(r['val_bits_per_char'] for r in results)
    lines = [f"| {what} | iterations | target tokens | positions | targets | train time |"
             f" val loss (nats/target) | val bits/char |", '|---|---:|---:|---:|---:|---:|---:|---:|']
    for r in results:
        bits = f"{r['val_bits_per_char']:.4f}"
        lines.append(f"| `{r['name']}` | {r['iters']:,} | {r['target_tokens']:,.0f} | {r['positions']:,} |"
                     f" {r['target_share']:.0%} | {r['train_s']:.0f} s | {r['val_loss']:.4f} |"
                     f" {f'**{bits}**' if r['val_bits_per_char'] == best else bits} |")
    return '\n'.join(lines) + '\n'


def plot(results, path, title):
    """Bits per character against target tokens learned and against training time, one line per run."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for r in results:
        bits = [p['val_bits_per_char'] for p in r['curve']]
        axes[0].plot([p['target_tokens'] / 1e6 for p in r['curve']], bits, 'o-', label=r['name'], alpha=0.85)
        axes[1].plot([p['train_s'] / 60 for p in r['curve']], bits, 'o-', label=r['name'], alpha=0.85)
    axes[0].set_xlabel('target tokens learned (millions)')
    axes[1].set_xlabel('training time (minutes, this machine)')
    axes[0].set_ylabel('held-out bits per character')
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with storage.atomic_write(path) as f:
        fig.savefig(f, format='png', dpi=80)
    plt.close(fig)


def ablate(cfg):
    """Run every variant; write and return the results."""
    configurator.check(cfg)
    variant_list = variants(cfg)
    cfg = dataclasses.replace(cfg, ablation_dir=cfg.ablation_dir or f"{cfg.out_dir}-ablate-{cfg.what}")
    documents, chars, scored_on = held_out(cfg, variant_list)
    budget = cfg.target_tokens or cfg.max_iters * cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    os.makedirs(cfg.ablation_dir, exist_ok=True)
    print(f"ablation of {cfg.what}: {len(variant_list)} runs of {budget:,} target tokens each, scored on"
          f" {documents.starts.size:,} held-out documents of {scored_on} ({int(documents.pairs.sum()):,} targets,"
          f" {chars:,} characters)")
    results = [run_variant(cfg, v, documents, chars, budget) for v in variant_list]
    title = (f"{cfg.what} ablation: {cfg.model_type} {cfg.n_layer}x{cfg.n_embd}, block {cfg.block_size},"
             f" {budget:,} target tokens per run; scored on {scored_on} val")
    markdown = table(results, cfg.what)
    with storage.atomic_write(os.path.join(cfg.ablation_dir, 'results.md'), 'w') as f:
        f.write(f"{title}\n\n{markdown}")
    with storage.atomic_write(os.path.join(cfg.ablation_dir, 'results.json'), 'w') as f:
        json.dump({'config': dataclasses.asdict(cfg), 'scored_on': scored_on, 'documents': documents.starts.size,
                   'targets': int(documents.pairs.sum()), 'chars': chars, 'results': results}, f, indent=1)
    plot(results, os.path.join(cfg.ablation_dir, 'ablation.png'), title)
    print(f"\n{markdown}\nwrote {cfg.ablation_dir}/results.md, results.json, ablation.png")
    return results


def main(argv=None):
    return ablate(parse(AblateConfig, argv))


if __name__ == '__main__':
    run(main)
