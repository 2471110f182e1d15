"""Until the recipes log ``val/quality`` (issue 26 item 1), a search ranked by it (tune's default)
ends after the first validation with one line saying the trials report no such metric: tests of the
default objective (the demo, the example configs, ``--metric quality``) skip then, saying why."""

from __future__ import annotations

import pytest

NOT_LOGGED = "--metric val/quality: the trials report no such metric"


def skip_until_quality_is_logged(stderr: str) -> None:
    """Skip the calling test when a search stopped because no recipe logs ``val/quality`` yet."""
    if NOT_LOGGED in stderr:
        pytest.skip("the recipes do not log val/quality yet (issue 26 item 1): the default objective "
                    "cannot rank this search; remove this skip when it lands")
