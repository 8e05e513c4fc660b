"""Train a GPT or an LSTM on a prepared data directory; checkpoint, log metrics and plot the loss.

    python train.py config/train_akjv.py --batch_size=500
    python train.py config/train_akjv_lstm.py
    python train.py config/train_akjv.py --init_from=resume      # continue out_dir/ckpt.pt (or best.pt alone)
    python train.py config/train_akjv.py --overwrite=True        # from scratch, replacing out_dir's old run
    python train.py --data_dir=data/tinystories --init_from=path/to/gpt2  # fine-tune a Hugging Face GPT-2 directory
    torchrun --standalone --nproc_per_node=4 train.py config/train_akjv.py --gradient_accumulation_steps=4

Writes to out_dir: ckpt.pt (latest), best.pt (lowest val loss), metrics.jsonl, loss.png, and .lock, held while
a run trains there (one run per out_dir). A scratch run into an out_dir that holds a checkpoint stops at once
unless told --overwrite=True: then the old run's files are replaced as the new run writes its first evaluation
and checkpoint.
Ctrl-C or SIGTERM finishes the current step, saves ckpt.pt and prints the command that resumes the run.
Under torchrun (see distributed.py) the processes share each optimizer step's batches and process 0 writes.
"""
import functools
import sys

from configurator import parse, run
from slm import budget, training
from slm.training import TrainConfig  # noqa: F401  (the options: python train.py -h, docs/options.md)


def main(argv=None, started=None):
    """Train as argv says; started: time.perf_counter() when the run began (None: now)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return training.train(parse(TrainConfig, argv), argv, started)


if __name__ == '__main__':
    run(functools.partial(main, started=budget.process_start()))  # --max_time counts the interpreter's start-up
