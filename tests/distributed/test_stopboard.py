"""ASHA's decision board, without Ray: a wait returns when the decision is posted, not on a poll."""

from __future__ import annotations

import asyncio
import time

from gsv_ray.distributed.stopboard import StopBoard


def test_wait_returns_when_the_decision_is_posted_and_is_bounded():
    async def main():
        board = StopBoard()
        t0 = time.monotonic()
        waiting = asyncio.create_task(board.wait("t1", 2, 30.0))
        await asyncio.sleep(0.05)
        await board.decide("t1", 2, True)
        stopped, took = await waiting, time.monotonic() - t0
        later = await board.wait("t1", 2, 1.0)  # posted before the wait: at once
        t1 = time.monotonic()
        none = await board.wait("t1", 4, 0.2)  # never posted: the trial goes on
        return stopped, took, later, none, time.monotonic() - t1, await board.decision("t1", 4)

    stopped, took, later, none, waited, decision = asyncio.run(main())
    assert stopped is True and later is True and took < 5
    assert none is False and 0.15 < waited < 5 and decision is None
