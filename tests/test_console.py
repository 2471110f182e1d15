"""The console: on a real pseudo-terminal and off one, library output goes to the log file and our
lines and progress to the terminal, at most 80 columns wide."""

from __future__ import annotations

import os
import pty
import sys
from pathlib import Path

import pytest

from gsv_ray.console import WIDTH, wrap

CHATTY = r"""
import logging, sys, time
from gsv_ray.console import Chatter, ProgressDisplay, TrialsDisplay
with Chatter(sys.argv[1]) as c:
    d = ProgressDisplay(c, every_s=0.0)
    d.start(5, 0)
    for i in range(1, 6):
        print("LIBRARY CHATTER")
        logging.getLogger("ray").warning("RAY WARNING")
        d.update(i, {"loss": 1.0 / i, "lr/generator": 1e-4})
        time.sleep(0.02)
    d.close()
    t = TrialsDisplay(c, total=5, every_s=0.0)
    t.start()
    t.update("a1b2_00000", step=3, status="running", val=1.5)
    print("MORE CHATTER", file=sys.stderr)
    t.close()
    c.say("our line " + "word " * 30)
"""


def _run_on_pty(args: list[str]) -> str:
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execv(sys.executable, [sys.executable, *args])
    out = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.waitpid(pid, 0)
    return out.decode(errors="replace")


@pytest.mark.skipif(not hasattr(pty, "fork"), reason="needs a pseudo-terminal (POSIX)")
def test_on_a_terminal_chatter_goes_to_the_log(tmp_path):
    log = tmp_path / "logs" / "gsv-ray.log"
    text = _run_on_pty(["-c", CHATTY, str(log)])
    assert "CHATTER" not in text and "RAY WARNING" not in text, text  # rich's live displays must not
    assert "our line" in text  # capture stdout into the terminal
    kept = log.read_text()
    assert kept.count("LIBRARY CHATTER") == 5 and "MORE CHATTER" in kept and "RAY WARNING" in kept


def test_off_a_terminal_plain_progress_lines(tmp_path):
    import subprocess

    log = tmp_path / "gsv-ray.log"
    r = subprocess.run([sys.executable, "-c", CHATTY, str(log)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "CHATTER" not in r.stdout + r.stderr
    assert any(line.startswith("train 5/5  ETA") and "loss 0.2" in line for line in lines), lines
    assert any(line.startswith("tune: 1 running") for line in lines), lines
    assert all(len(line) <= WIDTH for line in lines), lines


def test_wrap_keeps_words_whole():
    path = "/very/long/" + "p" * 100
    out = wrap(f"best weights: {path}")
    assert out.splitlines() == ["best weights:", f"  {path}"]
    assert wrap("short") == "short"
    assert all(len(line) <= WIDTH for line in wrap("word " * 60).splitlines())


def test_a_command_stays_whole_on_a_line_of_its_own():
    """A command to copy is never split: after its prose when both fit, else on its own line (as
    long as it is), quoted where a shell needs it, its glob left for the shell."""
    import shlex

    from gsv_ray.console import Copyable, command

    short = Copyable("W&B: 3 offline runs; upload:", command("wandb", "sync", "d/wandb", glob="/offline-run-*"))
    assert wrap(short) == "W&B: 3 offline runs; upload: wandb sync d/wandb/offline-run-*"
    folder = "/tmp/" + "a long folder " * 6 + "/wandb"
    long = Copyable("W&B (offline), upload with:", command("wandb", "sync", folder))
    lines = wrap(long).splitlines()
    assert lines[0] == "W&B (offline), upload with:" and len(lines) == 2
    assert shlex.split(lines[1]) == ["wandb", "sync", folder] and len(lines[1]) > WIDTH
    assert str(long) == f"W&B (offline), upload with: wandb sync '{folder}'"  # as a plain line (print)


FAILING = r"""
import sys
from gsv_ray.console import Chatter
from gsv_ray.errors import ConfigError, InfraError
kind = sys.argv[2]
with Chatter(sys.argv[1]):
    try:
        raise RuntimeError("the real cause")
    except RuntimeError as e:
        if kind == "infra":
            raise InfraError("training on Ray failed on rank 1: RuntimeError: the real cause") from e
        raise ConfigError("--lr-scale must be > 0, got -1") from None
"""


@pytest.mark.parametrize("kind", ["infra", "config"])
def test_an_infrastructure_failure_keeps_its_traceback_in_the_log(kind, tmp_path):
    """Exit 1 errors (the machinery failed) keep their cause: its traceback goes to the run's log and
    the terminal says where; a user's own bad option (exit 2) creates no log at all."""
    import subprocess

    log = tmp_path / "logs" / "gsv-ray.log"
    r = subprocess.run([sys.executable, "-c", FAILING, str(log), kind], capture_output=True, text=True, timeout=60)
    if kind == "infra":
        text = log.read_text()
        assert "RuntimeError: the real cause" in text and "The above exception was the direct cause" in text
        assert f"log and traceback: {log}" in r.stderr
    else:
        assert not log.exists() and "log" not in r.stderr.split("Traceback")[0]


WRITER = r"""
import pickle, sys
from gsv_ray.distributed.relay import RelayedProgress
queue = pickle.loads(bytes.fromhex(sys.argv[1]))
p = RelayedProgress(queue, sys.argv[2], every_s=0)
p.start(400)
for step in range(1, 401):
    p.update(step, {"loss": float(step), "lr/gpt": 1e-4})
p.say("done")
"""


def test_a_local_relay_takes_every_event_of_concurrent_workers_without_an_actor(tmp_path, monkeypatch):
    """Our own Ray on this machine: workers (here 3 real processes writing at once) append events to
    a file the driver tails; every event arrives once, each writer's in order, also the ones written
    just before close; the file is removed. (A Ray queue actor cost ~250 wakeups/s beside training.)"""
    import pickle
    import subprocess
    import tempfile

    from gsv_ray.distributed.relay import FileQueue, Relay

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    got: list[dict] = []
    relay = Relay(got.append, local=True)
    assert isinstance(relay.queue, FileQueue) and Path(relay.queue.path).parent == tmp_path
    blob = pickle.dumps(relay.queue).hex()  # as Ray ships it to a worker
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, blob, f"w{i}"]) for i in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    relay.close()
    for i in range(3):
        mine = [e for e in got if e["run"] == f"w{i}"]
        assert [e["step"] for e in mine if e["kind"] == "step"] == list(range(1, 401))
        assert mine[0]["kind"] == "start" and mine[-1] == {"run": f"w{i}", "kind": "line", "text": "done"}
    assert len(got) == 3 * 402 and not Path(relay.queue.path).exists()


SIGNAL_DURING_SAY = r'''
import logging, os, signal, sys
from gsv_ray.console import Chatter

logging.basicConfig(stream=sys.stderr)  # a library's handler made before the chatter (as Ray's are)
log = logging.getLogger("lib")


def handler(sig, frame):  # a library's Ctrl-C handler that logs (Ray Tune's and Ray Train's do)
    log.warning("stop signal received")


class Terminal:
    """The terminal: the first line written is the moment a real SIGINT arrives."""
    def __init__(self, stream):
        self.stream, self.sent = stream, False
    def write(self, s):
        self.stream.write(s)
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)
        return len(s)
    def flush(self):
        self.stream.flush()


signal.signal(signal.SIGINT, handler)
with Chatter(sys.argv[1]) as chatter:
    chatter.out = Terminal(sys.__stdout__)
    chatter.say("refit: starting")
    chatter.say("after")
'''


def test_a_signal_handler_that_logs_while_a_line_is_said_does_not_hang(tmp_path):
    """A Ctrl-C arriving while the console writes a line runs the library's handler right there, in
    the same thread, and the handler's log line comes back into the console: it goes to the log after
    the line instead of waiting forever for the console's own lock (a Ctrl-C as tune's refit started hung)."""
    import subprocess

    log = tmp_path / "logs" / "gsv-ray.log"
    r = subprocess.run([sys.executable, "-c", SIGNAL_DURING_SAY, str(log)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines() == ["refit: starting", "after"]
    assert "stop signal received" in log.read_text()
