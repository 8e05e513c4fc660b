"""Is my model any good? A report card for a trained checkpoint, computed offline from it and its prepared data.

    python evaluate.py --out_dir=out-akjv                          # out-akjv/report/: report.md, report.json, plots
    python evaluate.py --out_dir=out-akjv --compare=out-akjv-lstm  # both in one report, with the differences
    python evaluate.py --out_dir=out-akjv-char --stride=32 --num_samples=20

It answers what a validation loss does not: the exact held-out score with an interval, chunked and sliding;
how much of its context the model uses; whether its probabilities mean what they say (calibration); whether it
writes the language or copies its corpus (memorization against a held-out baseline); and fluency proxies that
need no judge. slm/report.py measures, slm/report_page.py writes; docs/evaluation.md shows three reports.
"""
import torch

from configurator import parse, run
from slm import runtime
from slm.report import EvaluateConfig, evaluate  # noqa: F401 (EvaluateConfig: the options, documented here)


def main(argv=None):
    cfg = parse(EvaluateConfig, argv)
    torch.set_num_threads(runtime.resolve_threads(cfg.threads))  # for the whole process: its entry point
    return evaluate(cfg)


if __name__ == '__main__':
    run(main)
