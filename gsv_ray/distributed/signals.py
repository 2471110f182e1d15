"""Ctrl-C handling around Ray's ``fit()`` calls.

Ray Tune (``tune.Tuner.fit``) and Ray Train (``TorchTrainer.fit``) install their own SIGINT handler
(Tune also SIGUSR1) for a graceful stop, and leave it installed when the run ends without a Ctrl-C:
Tune restores the previous handler only inside its handler, Train never. A Ctrl-C after such a run —
while tune writes its results or starts the refit — then reached a handler of a finished run: Tune's
swallowed it (the refit ran to its end) and logged from inside our console's ``say``, which deadlocked.
:func:`own_signal_handlers` puts back the handlers that were there before the call.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: The signals Ray's fit() takes over (SIGUSR1: Tune's "stop the experiment", POSIX only).
_TAKEN = tuple(getattr(signal, name) for name in ("SIGINT", "SIGUSR1") if hasattr(signal, name))


@contextmanager
def own_signal_handlers() -> Iterator[None]:
    """Run the body (a Ray ``fit()``), then restore the SIGINT/SIGUSR1 handlers it started with.

    Only the main thread can set handlers (as in Ray, elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = [(sig, signal.getsignal(sig)) for sig in _TAKEN]
    try:
        yield
    finally:
        for sig, handler in saved:
            if handler is not None:  # None: set from C, cannot be restored from Python
                signal.signal(sig, handler)
