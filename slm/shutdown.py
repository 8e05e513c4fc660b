"""How prepare.py stops, whatever stops it: the worker processes it forks die with it (a SIGKILL included), and
Ctrl-C or SIGTERM ends it with one line, its temporary files removed and the previous data as it was.

    prepare.py ── fork ──> datasets' map workers, and the manager process behind them
        each: PR_SET_PDEATHSIG (the kernel kills it when its parent dies), Ctrl-C ignored (the parent stops it)
"""
import contextlib
import ctypes
import os
import signal
import sys
import threading

from slm import storage


PR_SET_PDEATHSIG = 1  # prctl option, from <linux/prctl.h>
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

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
