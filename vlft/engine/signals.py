"""Ctrl-C, SIGTERM and SIGUSR1 become a stop request that the loop honours at the next optimizer-step boundary.

A signal never interrupts a step halfway: the handler only records it, so the checkpoint written on the way
out holds exactly the state of the step it is named after. Schedulers send SIGTERM (SLURM, Kubernetes,
`docker stop`, `timeout`) and SLURM can send SIGUSR1 ahead of time (`--signal=USR1@120`); both save like
Ctrl-C. Further signals while stopping are acknowledged and ignored, so a second Ctrl-C cannot abandon the
save.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """The first stop signal received (0: none) and whether the loop is already saving on its way out."""

    def __init__(self):
        self.signum = 0
        self.saving = False

    @property
    def requested(self) -> bool:
        return self.signum != 0

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        """The shell convention for a process ended by a signal: 128 + its number (130 for Ctrl-C)."""
        return 128 + self.signum if self.signum else 1

    def handle(self, signum: int, frame=None) -> None:
        if self.signum:
            what = "saving the checkpoint; waiting for it to finish" if self.saving else (
                "stopping after the current step, then saving")
            print(f"\n{signal.Signals(signum).name} again: {what}", file=sys.stderr, flush=True)
            return
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after the current step and saving a checkpoint "
              "(a second signal does not abandon the save)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Install the handlers for the duration (main thread only; elsewhere the request never fires).

    SIGINT is handled even when the shell started us with it ignored (a background job in a script):
    an explicit `kill -INT` then still saves instead of doing nothing.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        for signum in STOP_SIGNALS:
            signal.signal(signum, request.handle)
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
