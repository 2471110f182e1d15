"""Shared test fixtures.

Reference data (the GPT-SoVITS compatibility contract) is part of the repository, in
``tests/reference/gpt_sovits``; ``GSV_REFERENCE_DIR`` points the tests at another copy. Missing data
fails the tests (never skips them): a fresh clone checks everything.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def _ctrl_c_reaches_the_processes_we_start() -> None:
    """A suite started as a background job of a non-interactive shell (``.ci/run &``) begins with SIGINT
    ignored, and every process it starts inherits that: the tests that press Ctrl-C on a gsv-ray by PID
    would then test nothing (Ray Tune installs its own handler and still reacts; a plain run does not).
    A user's terminal delivers Ctrl-C, so the suite restores Python's default before it starts any."""
    import signal

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_ctrl_c_reaches_the_processes_we_start()


def _wandb_outlives_in_process_commands() -> None:
    """W&B makes its media temp folder once per process, when it is first imported, under the temp dir
    of that moment. A command called in-process (``run_cli(..., in_process=True)``) runs in a private
    temp dir it removes at its end: had it imported W&B first, every later W&B table of the suite's
    process would fail with FileNotFoundError (seen when test files ran in another order). Importing
    it here puts that folder in the suite's own temp dir (docs/design/stack-notes.md)."""
    import wandb  # noqa: F401


_wandb_outlives_in_process_commands()


#: The tests that start or join a Ray cluster: test files and single tests (node-id prefixes). Under
#: pytest-xdist (README's test command: ``-n 2``) they run one after another on one worker, first, while
#: the other worker takes every other test file (:class:`RayFirst`): two local Rays at once would contend
#: for the two cores, and each Ray test is CPU work that a Ray-free test beside it fills the gaps of.
#: A Ray test missing here still passes (our local Rays are private); it only runs beside the others.
RAY_TESTS = (
    "tests/distributed/",
    "tests/tune/test_tune.py",
    "tests/prepare/test_prepare.py::test_ray_",
    "tests/prepare/test_prepare_zh.py::test_ray_",
    "tests/prepare/test_prepare_zh.py::test_g2pw_on_ray_",
    "tests/test_semantic.py::test_workers_2_",
    "tests/test_semantic.py::test_ray_",
    "tests/train/test_run_ownership.py::test_divergence_on_ray_",
)


def _is_ray_test(nodeid: str) -> bool:
    return nodeid.startswith(RAY_TESTS)


def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's hook: schedule the Ray tests as one unit, given first, and the rest by file."""
    from xdist.scheduler import LoadScopeScheduling

    class RayFirst(LoadScopeScheduling):
        # Not public xdist API: its own LoadFile/LoadGroup schedulers group by overriding this method, and
        # xdist's `--dist loadgroup` did not group with this pytest (docs/design/tests.md). xdist is pinned;
        # were the method renamed, the Ray tests would be spread by file again: still correct, only slower.
        def _split_scope(self, nodeid: str) -> str:
            return "ray" if _is_ray_test(nodeid) else nodeid.split("::", 1)[0]

    return RayFirst(config, log)


def pytest_configure(config):
    """An xdist worker computes with one torch thread: two workers share two cores, and torch's default
    of one thread per core would oversubscribe them."""
    if hasattr(config, "workerinput"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Under xdist, the Ray tests first: the longest unit starts at once (a stable sort keeps the order
    within each part)."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: not _is_ray_test(item.nodeid))


#: The copy committed with the tests (see tests/reference/README.md).
BUNDLED_REFERENCE = REPO_ROOT / "tests" / "reference" / "gpt_sovits"


def find_reference_dir() -> Path:
    """``GSV_REFERENCE_DIR`` if set, else the bundled copy."""
    env = os.environ.get("GSV_REFERENCE_DIR")
    return Path(env) if env else BUNDLED_REFERENCE


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    ref = find_reference_dir()
    if not (ref / "FORMATS.md").is_file():
        pytest.fail(
            f"GPT-SoVITS reference data not found at {ref} (no FORMATS.md): unset GSV_REFERENCE_DIR "
            f"to use the copy in {BUNDLED_REFERENCE.relative_to(REPO_ROOT)}, or point it at a full copy"
        )
    return ref


@pytest.fixture(scope="session")
def fixtures_dir(reference_dir: Path) -> Path:
    return reference_dir / "fixtures"


@pytest.fixture(scope="session")
def schemas_dir(reference_dir: Path) -> Path:
    return reference_dir / "schemas"


@pytest.fixture(scope="session")
def goldens_dir(reference_dir: Path) -> Path:
    return reference_dir / "goldens"


#: Disk the generated full-size files may keep between tests (the least recently used go first).
SCHEMA_FILES_BUDGET = 1536 * 2**20
_SCHEMA_FILES = pytest.StashKey[object]()


@pytest.fixture(scope="session")
def schema_files(request, schemas_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """Full-size files of every kind and version, generated from the schemas on demand; at most
    SCHEMA_FILES_BUDGET of them kept between tests (:func:`_trim_schema_files`)."""
    import shutil

    from tests.support.schemafiles import SchemaFiles

    root = tmp_path_factory.mktemp("schema_files")
    files = request.config.stash[_SCHEMA_FILES] = SchemaFiles(schemas_dir, root)
    yield files
    del request.config.stash[_SCHEMA_FILES]
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _trim_schema_files(request):
    yield
    files = request.config.stash.get(_SCHEMA_FILES, None)
    if files is not None:
        files.trim(SCHEMA_FILES_BUDGET)


@pytest.fixture(scope="session")
def v4_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A narrow v4 base G and a LoRA export (rank 4) trained on it, in GPT-SoVITS's formats, and a
    synthetic experiment folder (``gsv_ray.demo.make_v3_inputs``)."""
    from gsv_ray.demo import make_v3_inputs

    return make_v3_inputs(tmp_path_factory.mktemp("v4"), "v4")


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300, in_process: bool = False
):
    """Run the installed ``gsv-ray`` entry point as a user would (a real subprocess); with
    ``in_process``, ``gsv_ray.cli.main`` in this process instead (no interpreter and torch import to
    pay; for tests about output and exit status, not about the process: ``tests/support/cli.py``)."""
    import subprocess
    import sys

    if in_process:
        from tests.support.cli import run_cli_in_process

        return run_cli_in_process(*args, cwd=cwd, env=env)

    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "gsv_ray", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
