"""What keeps work safe, whatever stops it: one run per out_dir (a lock), no scratch run over a trained model,
out_dir checked before training, the step-loss record that no non-finite step gets past into a checkpoint, the
command that resumes; and every signal a command handles, in one place:

    train.py    Ctrl-C / SIGTERM: finish the step, save ckpt.pt, print the resume command (StopOnSignal)
    prepare.py  Ctrl-C / SIGTERM: one line, temporaries removed, the previous data kept (stop_on_signals);
                its forked workers die with it, a SIGKILL included (children_die_with_parent):
                    prepare.py ── fork ──> datasets' map workers, and the manager process behind them
                        each: PR_SET_PDEATHSIG (the kernel kills it when its parent dies), Ctrl-C ignored
    any command a Ctrl-C while Python shuts down ends it at once (exit_at_once_on_ctrl_c, configurator.run)
"""
import contextlib
import ctypes
import dataclasses
import errno
import fcntl
import math
import os
import shlex
import signal
import sys
import threading

import torch

from configurator import UserError
from slm import checkpoint, storage

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # what a command stops on: Ctrl-C, and kill's default


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
    path = next((p for name in checkpoint.CHECKPOINTS if os.path.exists(p := os.path.join(out_dir, name))), None)
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
    ckpt_path, best_path = (os.path.join(out_dir, name) for name in checkpoint.CHECKPOINTS)
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
    present = sum(os.path.getsize(p) for name in checkpoint.CHECKPOINTS
                  if os.path.exists(p := os.path.join(out_dir, name)))
    storage.check_free_space(out_dir, 3 * checkpoint_bytes - present, 'the checkpoints (ckpt.pt, best.pt)')


class StopOnSignal:
    """While active, SIGINT (Ctrl-C) and SIGTERM only ask the training loop to stop: it finishes the step it is
    in, saves a checkpoint and exits. A second signal stops at once, with one line: os._exit, not an exception
    that could surface as a traceback from wherever it lands (the atomic writes keep the files on disk whole; the
    next run in out_dir removes a temporary file this one leaves, and the operating system its lock)."""

    def __init__(self):
        self.signum, self.previous, self.pid = None, {}, os.getpid()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # the only thread Python lets handle signals
            self.previous = {signum: signal.signal(signum, self._request) for signum in STOP_SIGNALS}
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


# ---------------------------------------------------------------------------------------------------------
# prepare.py: its forked workers, and Ctrl-C or SIGTERM in the middle of it

PR_SET_PDEATHSIG = 1  # prctl option, from <linux/prctl.h>

_fork_guard = {'is_on': False, 'parent': None}  # parent: the pid of the process whose children check it


def _in_forked_child():
    if not _fork_guard['is_on']:
        return
    # PR_SET_PDEATHSIG: the kernel sends SIGKILL when the thread that forked this process ends, even by SIGKILL
    # (fine: datasets starts its pools from the main thread); if the parent died before that, go now.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != _fork_guard['parent']:
        os._exit(1)
    _fork_guard['parent'] = os.getpid()  # for the children of this one
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal sends Ctrl-C to every process: the parent stops them
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # Pool.terminate's signal, not the parent's handler


@contextlib.contextmanager
def children_die_with_parent():
    """While active, every process forked from this one (datasets' map workers and the manager process behind
    them, and their own children) dies with its parent, however it ends, and ignores Ctrl-C. Linux only: elsewhere
    a killed prepare.py may leave its workers running."""
    if not sys.platform.startswith('linux'):
        yield
        return
    if _fork_guard['parent'] is None:  # fork hooks cannot be removed: registered once, switched by is_on
        os.register_at_fork(after_in_child=_in_forked_child)
    _fork_guard.update(is_on=True, parent=os.getpid())
    try:
        yield
    finally:
        _fork_guard['is_on'] = False


@contextlib.contextmanager
def signals_held():
    """Hold SIGINT and SIGTERM back until the block is done (a clean-up that must not stop halfway)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def stop_on_signals(data_dir):
    """While active, Ctrl-C (SIGINT) or SIGTERM stops the run as an error does: every temporary is removed on
    the way out (the workers ignore Ctrl-C and are terminated by their pool); then one line, and exit 128 +
    the signal's number. Whatever exception the signal turns into on its way (datasets' pool raises its own
    from a KeyboardInterrupt), the signal decides the exit."""
    received, stopped, owner = [], threading.Event(), os.getpid()

    def stop(signum, frame):
        if os.getpid() != owner:  # a child forked a moment ago, before it set its own handlers
            if signum == signal.SIGTERM:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if stopped.is_set():
            return
        if not received:
            received.append(signum)
            threading.Thread(target=send_again, args=(signum,), daemon=True).start()
        raise KeyboardInterrupt

    def send_again(signum):
        # Python prints and drops an exception raised inside a fork hook (logging's, filelock's), and so a signal
        # handled while one runs: it comes again until the run has stopped (and that print is left out).
        while not stopped.wait(0.5):
            os.kill(owner, signum)

    def unraisable(info):
        if not (received and info.exc_type is KeyboardInterrupt):
            previous_unraisable(info)

    if threading.current_thread() is not threading.main_thread():  # only there can Python handle signals
        yield
        return
    previous = {signum: signal.signal(signum, stop) for signum in STOP_SIGNALS}
    previous_unraisable, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
        if received:  # the exception was lost, and the run finished before the signal came again
            raise KeyboardInterrupt
    except BaseException:
        if not received:
            raise
        stopped.set()
        import multiprocess  # datasets' pools: a signal can land while one starts a process it then never stops,
        for child in multiprocess.active_children():  # which the exit would wait for
            child.kill()
        state = (f"{data_dir} holds a complete dataset" if os.path.exists(os.path.join(data_dir, storage.META))
                 else f"{data_dir} is not prepared: run prepare.py again")
        print(f"{signal.Signals(received[0]).name}: prepare stopped, its temporary files removed; {state}",
              file=sys.stderr)
        raise SystemExit(128 + received[0])
    finally:
        stopped.set()
        sys.unraisablehook = previous_unraisable
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def exit_at_once_on_ctrl_c():
    """From now on a Ctrl-C ends the process at once, exit 128 + SIGINT: for the end of a command, where Python
    shuts down (joins worker processes, runs atexit) and a KeyboardInterrupt would surface as a traceback from
    the middle of that."""
    signal.signal(signal.SIGINT, _exit_at_once)


def _exit_at_once(signum, frame):
    os._exit(128 + signum)
