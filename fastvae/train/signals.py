"""SIGINT and SIGTERM during a run: stop after the current step, with a checkpoint."""
from __future__ import annotations

import signal
import threading
from typing import Optional

__all__ = ["StopFlag"]


class StopFlag:
    """SIGINT/SIGTERM ask the loop to stop after the current step (and write a checkpoint); a second
    SIGINT interrupts at once.  The previous handlers are restored on exit; off the main thread
    (where handlers cannot be set) it never fires."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False

    @property
    def status(self) -> str:
        """The run's status for the signal received."""
        return f"signal {signal.Signals(self.signum).name}"
