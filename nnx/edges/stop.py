"""SIGINT and SIGTERM as a request to stop at the next epoch boundary.

An exception raised at a random point could land inside the store client's locks and hang the
clean-up, so the first signal only sets a flag that training checks after each epoch (logged and
checkpointed by then); a second signal stops at once.

In a submitit job (hydra/launcher=slurm) SIGUSR2 too: submitit has SLURM send it before the time
limit (sbatch --signal=USR2@<hydra.launcher.signal_delay_s>), and its own handler would stop the
job mid-epoch, the run FAILED; here the run ends KILLED after a whole epoch, and the relaunched
sweep resumes it.
"""

import contextlib
import os
import signal
import threading


class StopRequest:
    def __init__(self):
        self._event = threading.Event()

    def __bool__(self):
        return self._event.is_set()

    def _handle(self, signum, frame):
        if self._event.is_set():
            raise KeyboardInterrupt(f"signal {signum}")
        self._event.set()

    def check(self, why="stopped by a signal after a whole epoch (logged and checkpointed)"):
        """Raises KeyboardInterrupt(why) if a stop was requested (call it at an epoch boundary)."""
        if self:
            raise KeyboardInterrupt(why)


@contextlib.contextmanager
def on_signals():
    """Yields a StopRequest set by SIGINT/SIGTERM, and SIGUSR2 in a submitit job (only the main thread
    can take signals)."""
    request = StopRequest()
    previous = {}
    signals = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGUSR2,) if os.environ.get("SUBMITIT_EXECUTOR") else ())
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, request._handle) for sig in signals}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
