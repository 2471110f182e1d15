"""The decisions of a tune scheduler, for the trials' workers to read (see ``gsv_ray.tune.asha``).

A named Ray actor: the scheduler (on the Tune driver) posts whether it stopped a trial at a step;
rank 0 of that trial reads it right after the report and all ranks agree on it. It lives with the
worker side (``distributed``) because the workers read it; ``tune`` only writes to it.
"""

from __future__ import annotations

import asyncio


class StopBoard:
    """The scheduler's decision for each (trial, step) it saw, for the trials to read. An async
    actor: :meth:`wait` returns as soon as :meth:`decide` posts the decision it waits for."""

    def __init__(self) -> None:
        self._decisions: dict[tuple[str, int], bool] = {}
        self._posted: dict[tuple[str, int], asyncio.Event] = {}

    def _event(self, key: tuple[str, int]) -> asyncio.Event:
        return self._posted.setdefault(key, asyncio.Event())

    async def decide(self, trial_id: str, step: int, stop: bool) -> None:
        key = (trial_id, int(step))
        self._decisions[key] = bool(stop)
        self._event(key).set()

    async def decision(self, trial_id: str, step: int) -> bool | None:
        return self._decisions.get((trial_id, int(step)))

    async def wait(self, trial_id: str, step: int, timeout_s: float) -> bool:
        """The decision for ``(trial_id, step)`` once posted; False when none came in ``timeout_s``."""
        key = (trial_id, int(step))
        try:
            await asyncio.wait_for(self._event(key).wait(), timeout_s)
        except asyncio.TimeoutError:
            return False
        return self._decisions[key]


def board_name(tune_name: str) -> str:
    return f"gsv-ray-stopboard-{tune_name}"


def start_board(tune_name: str):
    """The search's :class:`StopBoard` actor (a new one on ``--resume``: the name is what the
    pickled scheduler and the trials know). Keep the handle: the actor lives as long as it."""
    import ray

    from gsv_ray.distributed.relay import on_this_node  # pinned to the driver's node: it must outlive every worker node

    return (
        ray.remote(num_cpus=0)(StopBoard)
        .options(name=board_name(tune_name), get_if_exists=True, scheduling_strategy=on_this_node())
        .remote()
    )


def wait_for_decision(name: str, trial_id: str, step: int, *, timeout_s: float = 60.0) -> bool:
    """Whether the scheduler stopped ``trial_id`` at ``step``: one call that returns when Tune has
    passed the scheduler the result of that report (False after ``timeout_s``: the trial goes on)."""
    import ray

    return bool(ray.get(ray.get_actor(name).wait.remote(trial_id, step, timeout_s)))
