"""SIGINT and SIGTERM as a request to stop at the next epoch boundary.

An exception raised at a random point could land inside the store client's locks and hang the
clean-up, so the first signal only sets a flag that training checks after each epoch (logged and
checkpointed by then); a second signal stops at once.
"""

import contextlib
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

    def check(self):
        """Raises KeyboardInterrupt if a stop was requested (call it at an epoch boundary)."""
        if self:
            raise KeyboardInterrupt("stopped by a signal after a whole epoch (logged and checkpointed)")


@contextlib.contextmanager
def on_signals():
    """Yields a StopRequest set by SIGINT/SIGTERM (only the main thread can take signals)."""
    request = StopRequest()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, request._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
