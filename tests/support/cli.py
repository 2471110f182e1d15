"""Run the ``gsv-ray`` command inside the test process: what :func:`tests.conftest.run_cli` does
without a new interpreter (each subprocess pays ~3-5 s of Python + torch imports on 2 cores).

For tests whose point is what the command prints and its exit status. Tests about the process
itself (a kill by PID, Ctrl-C, the real entry point's imports, umask, environment inheritance, what
a child process leaves behind) keep the subprocess.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback
from pathlib import Path


def run_cli_in_process(
    *args: str, cwd: Path | str | None = None, env: dict | None = None, replace_env: bool = False
) -> subprocess.CompletedProcess:
    """``gsv_ray.cli.main(args)`` with stdout/stderr captured, as a ``CompletedProcess`` (``args``,
    ``returncode``, ``stdout``, ``stderr``: text).

    Like the subprocess: ``env`` is added to the environment (with ``replace_env``, it is the whole
    environment, as ``subprocess.run(env=...)``), ``cwd`` is the working directory,
    ``SystemExit`` (argparse's errors, ``--help``) gives its exit status, and an uncaught exception
    prints its traceback to stderr with status 1. Everything the command changes in this process
    that a subprocess would have taken with it -- ``os.environ``, the working directory,
    ``sys.argv`` -- is restored afterwards. Output written to the file descriptors directly (by a
    child process or C code) is not captured: use the subprocess for those commands."""
    from gsv_ray.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_argv, saved_cwd = dict(os.environ), list(sys.argv), os.getcwd()
    if replace_env:
        os.environ.clear()
    os.environ.update({k: str(v) for k, v in (env or {}).items()})
    sys.argv[:] = ["gsv-ray", *args]
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(list(args))
            except SystemExit as e:
                rc = _exit_status(e.code, err)
            except Exception:  # what the interpreter does with an uncaught exception
                traceback.print_exc(file=err)
                rc = 1
    finally:
        os.chdir(saved_cwd)
        sys.argv[:] = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["gsv-ray", *args], rc, out.getvalue(), err.getvalue())


def _exit_status(code: object, err: io.StringIO) -> int:
    """The process exit status ``sys.exit(code)`` gives (a message is printed to stderr, status 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=err)
    return 1
