"""What keeps a long run's work safe: one run per out_dir (a lock), no scratch run over a trained model, out_dir
checked before training, a signal that stops after the step and saves, the step-loss record that no non-finite
step gets past into a checkpoint, and the command that resumes."""
import contextlib
import dataclasses
import errno
import fcntl
import math
import os
import shlex
import signal
import threading

import torch

from configurator import UserError
from slm import checkpoint, storage


CHECKPOINTS = ('ckpt.pt', 'best.pt')  # the latest, and the one of the lowest val loss


class OutDirLock:
    """An exclusive lock on out_dir for the length of a run: an flock on out_dir/.lock, which holds the PID of
    the process holding it. The operating system drops an flock when its process dies, however it dies, so a
    killed run leaves no stale lock. The file stays (deleting it would let two runs lock two files of one name)."""

    NAME = '.lock'

    def __init__(self, out_dir):
        self.out_dir, self.fd = out_dir, None
        self.path = os.path.join(out_dir, self.NAME)
        self.made_dir = self.made_file = False

    def acquire(self):
        try:
            self.made_dir, self.made_file = not os.path.isdir(self.out_dir), not os.path.exists(self.path)
            os.makedirs(self.out_dir, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise UserError(f"cannot write to out_dir {self.out_dir}: {error.strerror}; choose another --out_dir")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors='replace').strip() or 'unknown'
            os.close(fd)
            raise UserError(f"{self.out_dir} is in use by another training run (process {holder}): wait for it to"
                            f" finish or stop it, or choose another --out_dir")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f'{os.getpid()}\n'.encode(), 0)
        self.fd = fd

    def release(self):
        """Unlock; a run that stopped before writing anything leaves out_dir as it found it (no .lock in a new
        or empty directory). The file goes while still locked, so a run that opened it meanwhile is refused
        rather than locking a file no longer there."""
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        if self.made_file and os.listdir(self.out_dir) == [self.NAME]:
            os.remove(self.path)
        os.close(self.fd)  # and with it the lock
        self.fd = None
        if self.made_dir:
            with contextlib.suppress(OSError):  # left alone unless empty
                os.rmdir(self.out_dir)


def refuse_to_replace(out_dir):
    """Raise if out_dir holds a checkpoint, naming it and the ways on: a scratch run would replace it."""
    path = next((p for name in CHECKPOINTS if os.path.exists(p := os.path.join(out_dir, name))), None)
    if path is None:
        return
    try:
        held = checkpoint.load(path)
        what = f"iteration {held['iter_num']}, best val loss {held['best_val_loss']:.4f}"
    except UserError:
        what = "unreadable"
    raise UserError(f"{out_dir} already holds a trained model ({path}: {what}): continue it with"
                    f" --init_from=resume, train into another --out_dir, or replace it with --overwrite=True")


def load_resumable(out_dir, say):
    """(path, checkpoint) to resume from out_dir: ckpt.pt, or best.pt where there is no ckpt.pt (a run killed while
    it wrote its first ckpt.pt leaves that: best.pt is written first, and holds all a resume needs). A damaged
    ckpt.pt beside best.pt: the error says how to resume best.pt instead."""
    ckpt_path, best_path = (os.path.join(out_dir, name) for name in CHECKPOINTS)
    if not os.path.exists(ckpt_path):
        if not os.path.exists(best_path):
            raise UserError(f"nothing to resume in {out_dir} (no ckpt.pt or best.pt): train from scratch first"
                            f" (--init_from=scratch) or fix --out_dir")
        say(f"{out_dir} has no ckpt.pt: resuming best.pt, the checkpoint of its lowest val loss")
        return best_path, checkpoint.load(best_path)
    try:
        return ckpt_path, checkpoint.load(ckpt_path)
    except UserError as error:
        if not os.path.exists(best_path):
            raise
        raise UserError(f"{error}; to resume from best.pt (the checkpoint of the lowest val loss), move"
                        f" {ckpt_path} aside and resume again") from None


def write_error(path, error, out_dir, iter_num, last_checkpoint):
    """The UserError for a file of out_dir that could not be written at iteration iter_num: what to do about the
    disk, and how to go on from last_checkpoint, (path, its iteration, the resume command) or False if none."""
    if last_checkpoint:
        ckpt_path, saved_iter, command = last_checkpoint
        then = f"then resume from {ckpt_path} (iteration {saved_iter}, the last checkpoint written): {command}"
    else:
        then = "then start again"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = (f"{storage.free_space(out_dir)}: free some space there (or move {out_dir} to a disk with room and"
               f" pass its new --out_dir)")
    else:
        fix = f"make {out_dir} writable again"
    return UserError(f"cannot write {path} at iteration {iter_num}: {error.strerror}; {fix}, {then}")


def prepare_out_dir(out_dir, checkpoint_bytes):
    """Create out_dir and prove it is writable and has room for the checkpoints now, rather than at the first
    checkpoint an hour from now."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        with storage.atomic_write(os.path.join(out_dir, '.write-test')) as f:
            f.write(b'ok')
        os.remove(os.path.join(out_dir, '.write-test'))
    except OSError as error:
        raise UserError(f"cannot write to out_dir {out_dir}: {error.strerror}; choose another --out_dir")
    storage.remove_stray_temporaries(out_dir)
    # ckpt.pt, best.pt, and the temporary file of the one being replaced; files there now make room as replaced
    present = sum(os.path.getsize(p) for name in ('ckpt.pt', 'best.pt')
                  if os.path.exists(p := os.path.join(out_dir, name)))
    storage.check_free_space(out_dir, 3 * checkpoint_bytes - present, 'the checkpoints (ckpt.pt, best.pt)')


class StopOnSignal:
    """While active, SIGINT (Ctrl-C) and SIGTERM only ask the training loop to stop: it finishes the step it is
    in, saves a checkpoint and exits. A second signal stops at once, with one line: os._exit, not an exception
    that could surface as a traceback from wherever it lands (the atomic writes keep the files on disk whole; the
    next run in out_dir removes a temporary file this one leaves, and the operating system its lock)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum, self.previous, self.pid = None, {}, os.getpid()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # the only thread Python lets handle signals
            self.previous = {signum: signal.signal(signum, self._request) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def _request(self, signum, frame):
        if os.getpid() != self.pid:  # a DataLoader worker forked with this handler (Ctrl-C reaches the whole process
            return  # group): the training process stops it
        if self.signum is not None:
            os.write(2, f"\n{signal.Signals(signum).name} again: stopped at once, nothing more saved\n".encode())
            os._exit(128 + signum)
        self.signum = signum
        # os.write, not print: this handler may run while the main code is inside a print to the same stream
        os.write(2, f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint"
                    f" (send it again to stop at once)\n".encode())


class StepLosses:
    """The loss of each step since the last log line, left on the device so that the hot loop never waits.

    Why not check every loss for NaN at once: reading a value from the GPU makes the CPU wait for the GPU to
    finish all the work queued so far, which stops it from queuing the next steps ahead, and that idle time is
    a real share of a small model's step. So a step whose loss or gradients were not finite is recorded as NaN
    here, and the loop reads the record where it waits anyway (log lines, evaluations, checkpoints). With
    --on_nonfinite=stop, that means up to log_interval steps run on from a non-finite step before the run
    stops; their weights are never saved, since every checkpoint reads this record (and checks the weights)
    first. --on_nonfinite=skip must decide before the optimizer step, so it pays one wait per step.
    """

    def __init__(self, device, first_iter, values=()):
        self.first_iter = first_iter  # iteration of the first step recorded
        self.losses = [torch.tensor(v, device=device) for v in values]

    def record(self, loss):
        self.losses.append(loss)

    def values(self):
        """The recorded losses as floats (a host sync)."""
        return torch.stack(self.losses).tolist() if self.losses else []

    def first_nonfinite(self, values):
        """The iteration of the first step of values (as read from this record) that was not finite, or None."""
        return next((self.first_iter + i for i, v in enumerate(values) if not math.isfinite(v)), None)


MAX_SKIPPED_IN_A_ROW = 20  # --on_nonfinite=skip gives up after this many: the run is diverging, not unlucky


def weights_finite(model):
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


def resume_command(cfg, argv=None, launcher='python'):
    """The command that continues this run from its ckpt.pt: the arguments it was started with (or, when they
    are unknown, the settings that differ from the defaults), then --init_from=resume."""
    if argv is None:
        defaults = dataclasses.asdict(type(cfg)())
        argv = [f'--{k}={v}' for k, v in dataclasses.asdict(cfg).items() if v != defaults[k]]
    kept = [arg for arg in argv if not arg.startswith('--init_from=')]
    return f"{launcher} {shlex.join(['train.py', *kept, '--init_from=resume'])}"
