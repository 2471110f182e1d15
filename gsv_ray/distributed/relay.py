"""Lines and progress from Ray workers and trials to the driver's console (:mod:`gsv_ray.console`
draws them): :class:`Relay` on the driver, :class:`RelayedProgress` on a worker, the events in
between a :class:`FileQueue` (our own Ray) or a ``ray.util.queue.Queue`` (a cluster)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from typing import Any, Callable


class Relay:
    """Lines and progress from Ray workers and trials to the driver's console: the workers put small
    events (rate-limited) into ``queue`` and a driver thread hands them to ``handle``.

    ``local`` (our own Ray, every worker on this machine): ``queue`` is a :class:`FileQueue`, an
    append-only file the driver tails. Otherwise a ``ray.util.queue.Queue``, i.e. one more actor:
    the main thread of every Ray actor wakes ~100 times a second, and this one's blocking gets made
    ~250 wakeups/s and ~1.7 % of a core, taken from the training threads of a 2-core machine."""

    def __init__(self, handle: Callable[[dict[str, Any]], None], *, local: bool = False):
        self.handle = handle
        self._stop = threading.Event()
        if local:
            fd, path = tempfile.mkstemp(prefix="gsv-ray-console-", suffix=".jsonl")  # our private temp dir
            os.close(fd)
            self.queue: Any = FileQueue(path)
            target = self._tail
        else:
            from ray.util.queue import Queue

            self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": on_this_node()})
            target = self._drain
        self._thread = threading.Thread(target=target, name="gsv-ray-relay", daemon=True)
        self._thread.start()

    def _give(self, events: list[dict[str, Any]]) -> None:
        for e in events:
            try:
                self.handle(e)
            except Exception:  # noqa: BLE001 -- the console never stops a run
                logging.getLogger(__name__).exception("console relay")

    def _tail(self) -> None:
        """Read the events file as it grows (4 reads a second), whole lines only; after ``close``
        one last read takes what the workers wrote before the run ended."""
        rest = b""
        with open(self.queue.path, "rb") as f:
            while True:
                stopping = self._stop.is_set()
                rest += f.read()
                *lines, rest = rest.split(b"\n")
                events = []
                for line in lines:
                    try:
                        events.append(json.loads(line))
                    except ValueError:  # not ours, or damaged: skipped
                        continue
                self._give(events)
                if stopping:
                    return
                self._stop.wait(0.25)

    def _drain(self) -> None:
        from ray.util.queue import Empty

        # one blocking get at a time (it waits inside the queue actor): no polling. Polling qsize()
        # five times a second cost two remote calls each time, on cores that also train.
        while True:
            try:
                events = [self.queue.get(block=True, timeout=0.5)]
            except Empty:
                events = []
            except Exception:  # noqa: BLE001 -- the queue actor is gone (Ray shut down)
                events = []
                if not self._stop.is_set():
                    time.sleep(0.2)
            self._give(events)
            if self._stop.is_set() and not events:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if isinstance(self.queue, FileQueue):
            with contextlib.suppress(OSError):
                os.unlink(self.queue.path)


class FileQueue:
    """The workers' end of a local :class:`Relay`: each event is one JSON line appended with one
    ``write`` (``O_APPEND``: lines from several workers never interleave)."""

    def __init__(self, path: str):
        self.path = path

    def put_nowait(self, event: dict[str, Any]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)  # never created here: gone means the run ended
        try:
            os.write(fd, (json.dumps(event) + "\n").encode())
        finally:
            os.close(fd)


def on_this_node():
    """A scheduling strategy that keeps a helper actor on the driver's node: one placed on a worker
    node died with it (seen in the two-node test: the console went silent after the node was lost)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)


class RelayedProgress:
    """The progress display's interface on a Ray worker: forwards at most every ``every_s`` seconds
    (and the last step) to the driver's :class:`Relay` queue, tagged with ``run``."""

    def __init__(self, queue, run: str | None, every_s: float = 0.5):
        self.queue, self.run, self.every_s = queue, run, every_s
        self._last = 0.0

    def _put(self, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait({"run": self.run, **event})
        except Exception:  # noqa: BLE001 -- a full or gone queue never stops training
            pass

    def start(self, total: int, done: int = 0) -> None:
        self.total = total
        self._put({"kind": "start", "total": total, "step": done})

    def update(self, step: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if now - self._last >= self.every_s or step >= self.total:
            self._last = now
            lr = next((v for k, v in metrics.items() if k.startswith("lr/")), None)
            self._put({"kind": "step", "step": step, "loss": metrics.get("loss"), "lr": lr})

    def validated(self, step: int, loss: float | None) -> None:
        self._put({"kind": "val", "step": step, "val": loss})

    def say(self, line: str) -> None:
        self._put({"kind": "line", "text": line})

    def close(self) -> None:
        pass
