"""Every module of the package imports on its own. The floor of the quick tier (``pytest -m "not
slow"``): the modules that only real Ray runs exercise (the Ray Train worker, the stop board, the Tune
driver, ASHA and the refit) are at least imported there; their behaviour is tested by the slow tests
in tests/distributed and tests/tune."""

from __future__ import annotations

import importlib
import pkgutil

import gsv_ray

#: importing it runs the command (``python -m gsv_ray``)
RUNS_ON_IMPORT = {"gsv_ray.__main__"}


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(gsv_ray.__path__, "gsv_ray.") if m.name not in RUNS_ON_IMPORT]
    assert len(names) > 90 and "gsv_ray.distributed.worker" in names and "gsv_ray.tune.run" in names
    for name in names:
        importlib.import_module(name)
