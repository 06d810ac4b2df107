"""Ctrl-C during a sweep: the first stops the running trials gracefully, the second exits at once.

Ray Tune's own SIGINT handler ends the tuning loop without telling callbacks that trials
stopped (their MLflow runs would stay RUNNING) and prints ``Tuner.restore`` advice that does
not apply to our sweeps.  The driver disables it (``TUNE_DISABLE_SIGINT_HANDLER``) and installs
this one for the duration of ``Tuner.fit``: a first SIGINT asks Tune, through the ``Stopper``
interface, to stop every trial; the driver then marks the interrupted trials' runs KILLED and
tells the user how to resume.  A second SIGINT exits at once with status 130: every record is
written append-only or transactionally, so ``hoyersweep resume`` still finds a usable sweep.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from ray.tune.stopper import Stopper

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


class Interrupt(Stopper):
    """A Tune stopper that stops the whole experiment once SIGINT has been received."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.requested

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            os._exit(EXIT_INTERRUPTED)  # the second Ctrl-C: no more waiting
        self.requested = True
        print("\nstopping the running trials… (Ctrl-C again to exit at once)", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def handling(self) -> Iterator[Interrupt]:
        """Catch SIGINT while the block runs (main thread only; elsewhere signals cannot be caught)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
