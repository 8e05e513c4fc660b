"""Run train.py or prepare.py and SIGKILL it at an exact point: how the crash tests land a kill where they mean to.

    python tests/killpoint.py POINT[:SIGNAL] N SCRIPT [--key=value ...]      (SCRIPT: train or prepare)

POINT names what the process is doing when it dies, at the N-th time it does it:

    checkpoint-half-written   writing a checkpoint: half of its bytes are in the temporary file
    checkpoint-start          about to write a checkpoint (the ones before it are complete)
    rename                    about to rename a finished temporary file into place (os.replace)
    memmap                    about to map (a window of) a file into memory (np.memmap: prepare's output files)

With :SIGNAL (rename:SIGTERM, say) the process sends itself that signal there instead, and goes on.

The patch lives in this process only; the project's code has no test hooks. A kill from outside at a random
moment needs no help: the tests send those themselves.
"""
import io
import os
import runpy
import signal
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plant(point, n, signum=signal.SIGKILL):
    """Patch the function behind point so that its n-th call dies there (or is sent signum)."""
    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signum)

    calls = iter(range(n - 1, -1, -1))
    is_nth = lambda: next(calls, None) == 0  # noqa: E731
    if point == 'checkpoint-half-written':
        import torch
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if not is_nth():
                return real_save(obj, f, *args, **kwargs)
            buffer = io.BytesIO()
            real_save(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
            f.flush()
            die()
        torch.save = save  # checkpoint.save is the only caller in a training process
    elif point == 'checkpoint-start':
        from slm import checkpoint
        real_checkpoint_save = checkpoint.save
        checkpoint.save = lambda *args, **kwargs: die() if is_nth() else real_checkpoint_save(*args, **kwargs)
    elif point == 'rename':
        real_replace = os.replace
        os.replace = lambda *args, **kwargs: die() if is_nth() else real_replace(*args, **kwargs)
    elif point == 'memmap':
        import numpy as np
        real_memmap = np.memmap

        def memmap(*args, **kwargs):
            if is_nth():
                die()
            return real_memmap(*args, **kwargs)
        np.memmap = memmap
    else:
        raise SystemExit(f"unknown kill point {point}")


if __name__ == '__main__':
    point, n, script, *argv = sys.argv[1:]
    point, _, signal_name = point.partition(':')
    plant(point, int(n), getattr(signal, signal_name or 'SIGKILL'))
    from configurator import run
    main = runpy.run_path(os.path.join(ROOT, f'{script}.py'))['main']  # the script, not run as __main__
    run(lambda: main(argv))
