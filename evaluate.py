"""Is my model any good? A report card for a trained checkpoint, computed offline from it and its prepared data.

    python evaluate.py --out_dir=out-akjv                          # out-akjv/report/: report.md, report.json, plots
    python evaluate.py --out_dir=out-akjv --compare=out-akjv-lstm  # both in one report, with the differences
    python evaluate.py --out_dir=out-akjv-char --stride=32 --num_samples=20

It answers what a validation loss does not: the exact held-out score with an interval, chunked and sliding;
how much of its context the model uses; whether its probabilities mean what they say (calibration); whether it
writes the language or copies its corpus (memorization against a held-out baseline); and fluency proxies that
need no judge. slm/report.py measures, slm/report_page.py writes; docs/evaluation.md shows three reports.
"""
import dataclasses
import os
import sys

import torch

import configurator
from configurator import UserError, option, parse, run
from slm import report, report_page, runtime


@dataclasses.dataclass
class EvaluateConfig:
    out_dir: str = 'out'          # the run to evaluate: its best.pt, else ckpt.pt; the report goes to out_dir/report
    checkpoint: str = ''          # a checkpoint file instead of out_dir's (the report still goes to out_dir/report)
    compare: str = ''             # another run's out_dir: both in one report, out_dir/report-vs-OTHER, with the
    #                               differences
    data_dir: str = ''            # the prepared data to score on ('': the one the checkpoint was trained on)
    documents: int = option(0, low=0)  # held-out documents scored (0: all of them)
    stride: int | None = None     # the sliding score's windows lie stride tokens apart, so each target has at least
    #                               block_size - stride tokens of context (None: block_size // 2)
    batch_size: int = option(32, low=1)  # windows per forward pass while scoring
    bootstrap: int = option(1000, low=10)  # resamples of the documents for the 95% intervals
    num_samples: int = option(10, low=1)  # samples drawn (memorization, fluency, surprisal)
    sample_tokens: int = option(500, low=1)  # tokens in each sample
    temperature: float = option(1.0, low=0, low_open=True)  # of the samples: 1.0 draws from the model as it is
    top_k: int = option(0, low=0)  # of the samples: 0 = no truncation
    seed: int = 1337              # the samples' and the bootstrap's
    device: str = option('auto', choices=runtime.DEVICES)  # auto: cuda if present, else mps, else cpu
    threads: int = option(0, low=0)  # CPU threads (0: one per core)


def check(cfg):
    """One-line errors for options that cannot work, before the checkpoint is scored."""
    configurator.check(cfg)
    if cfg.stride is not None and cfg.stride < 1:
        raise UserError(f"--stride={cfg.stride}: the sliding windows must lie at least 1 token apart; give a stride"
                        f" from 1 to the model's block_size")
    if cfg.compare and os.path.abspath(cfg.compare) == os.path.abspath(cfg.out_dir):
        raise UserError(f"--compare={cfg.compare} is the run being evaluated: compare with another out_dir")


def check_stride(cfg, block_size):
    if cfg.stride is not None and cfg.stride > block_size:
        raise UserError(f"--stride={cfg.stride} is more than the model's block_size {block_size}: give a stride from 1"
                        f" to {block_size}")


def report_folder(cfg):
    """out_dir/report, or with --compare out_dir/report-vs-OTHER (a run's own report stays as it was)."""
    other = os.path.basename(os.path.normpath(cfg.compare))
    return os.path.join(cfg.out_dir, f'report-vs-{other}' if cfg.compare else 'report')


def evaluate(cfg, out=sys.stdout):
    """Write the report of cfg.out_dir's checkpoint (and cfg.compare's); return (report.md's path, the cards)."""
    check(cfg)
    device = runtime.resolve_device(cfg.device)
    runs = [report.load(cfg, out_dir, device) for out_dir in [cfg.out_dir] + ([cfg.compare] if cfg.compare else [])]
    for _, _, _, model, _ in runs:  # every checkpoint and option checked before minutes of measuring
        check_stride(cfg, model.args.block_size)
    cards = [report.report_card(cfg, loaded, device) for loaded in runs]
    path = report_page.write(cards, report_folder(cfg))
    out.write(report_page.table(cards) + f'\n\nwrote {path}\n')
    problems = [f"{card['model']['out_dir']}: {card['data_problem']}" for card in cards if card['data_problem']]
    if problems:
        raise UserError(f"{'; '.join(problems)} (the report holds the measures that need no data)")
    return path, cards


def main(argv=None):
    cfg = parse(EvaluateConfig, argv)
    torch.set_num_threads(runtime.resolve_threads(cfg.threads))  # for the whole process: its entry point
    return evaluate(cfg)


if __name__ == '__main__':
    run(main)
