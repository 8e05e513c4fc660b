"""The training log in out_dir: metrics.jsonl, one JSON object per line from train.py's log intervals and
evaluations, and loss.png, the loss plot drawn from it."""
import json
import os

from slm import storage


class MetricsLog:
    """out_dir/metrics.jsonl and the loss plot drawn from it."""

    def __init__(self, out_dir, resume_iter=None):
        self.path = os.path.join(out_dir, 'metrics.jsonl')
        self.plot_path = os.path.join(out_dir, 'loss.png')
        self.records, self.is_started = [], False
        if resume_iter is not None:
            if os.path.exists(self.path):
                with open(self.path) as f:  # keep what led up to the checkpoint; later lines were lost work
                    self.records = [r for r in map(read_record, f) if r and r['iter'] <= resume_iter]
            self.rewrite()
        # a scratch run (--overwrite) replaces the old log with its first record, at its first evaluation

    def write(self, **record):
        self.records.append(record)
        if not self.is_started:
            return self.rewrite()
        with open(self.path, 'a') as f:
            f.write(json.dumps(record) + '\n')

    def rewrite(self):
        with storage.atomic_write(self.path, 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in self.records)
        self.is_started = True

    def plot(self):
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, style in (('train_loss', '-'), ('eval_train_loss', 'o--'), ('val_loss', 'o-')):
            points = [(r['iter'], r[key]) for r in self.records if key in r]
            if points:
                ax.plot(*zip(*points), style, label=key.replace('_', ' '), alpha=0.8)
        ax.set_xlabel('iteration')
        ax.set_ylabel('loss (nats per token)')
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with storage.atomic_write(self.plot_path) as f:
            fig.savefig(f, format='png', dpi=100)
        plt.close(fig)


def read_record(line):
    """A metrics.jsonl line as a dict, or None for a line that a crash cut short."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and 'iter' in record else None
