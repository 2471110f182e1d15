"""Bad input: exit 2, one line on stderr naming the file, the problem and the fix; no traceback, no
library warnings; the file byte-for-byte and mtime unchanged. Malicious pickles never execute."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from tests.conftest import run_cli


def _assert_clean_failure(r, path: Path | str, *needles: str):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("gsv-ray: error: ")
    assert str(path) in line
    assert "Fix:" in line
    for n in needles:
        assert n in line, line
    assert "Traceback" not in r.stderr and "Warning" not in r.stderr
    assert r.stdout == ""


def _snapshot(p: Path):
    return (p.read_bytes(), p.stat().st_mtime_ns) if p.is_file() else None


def _check(path: Path, *needles: str, args=()):
    before = _snapshot(path)
    r = run_cli("inspect", *args, str(path))
    _assert_clean_failure(r, path, *needles)
    assert _snapshot(path) == before


def test_empty_file(tmp_path):
    p = tmp_path / "empty.pth"
    p.write_bytes(b"")
    _check(p, "empty")


def test_truncated_file(fixtures_dir, tmp_path):
    p = tmp_path / "trunc.pth"
    p.write_bytes((fixtures_dir / "SoVITS_weights_v2/gsvfix_e1_s2.pth").read_bytes()[:100_000])
    _check(p, "truncated or corrupt")


def test_truncated_tagged_file(fixtures_dir, tmp_path):
    p = tmp_path / "trunc_pro.pth"
    p.write_bytes((fixtures_dir / "SoVITS_weights_v2Pro/gsvfix_e1_s2.pth").read_bytes()[:-5000])
    _check(p, "truncated or corrupt")


def test_non_zip_binary(tmp_path):
    p = tmp_path / "noise.pth"
    p.write_bytes(os.urandom(4096))
    _check(p, "zip")


def test_text_file(tmp_path):
    p = tmp_path / "notes.pth"
    p.write_text("this is not a model\n" * 10)
    _check(p, "zip")


def test_directory(tmp_path):
    d = tmp_path / "SoVITS_weights_v2"
    d.mkdir()
    _check(d, "directory")


def test_missing_path(tmp_path):
    _check(tmp_path / "nope.pth", "no such file")


def test_gpt_file_where_sovits_expected(fixtures_dir):
    _check(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt", "GPT", "SoVITS", args=("--stage", "sovits"))


def test_zip_that_is_not_a_checkpoint(tmp_path):
    p = tmp_path / "archive.pth"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("readme.txt", "hello")
    _check(p, "data.pkl")


def test_non_gsv_tensors(tmp_path):
    p = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(2, 2), "fc.bias": torch.zeros(2)}, p)
    _check(p, "not a GPT-SoVITS weights file")


class _Payload:
    """Pickles as a call of ``func(arg)``: what an attacker would put in a shared .pth."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


def _malicious_pth(path: Path, func, arg: str, rename: tuple[bytes, bytes] | None = None, protocol: int = 2) -> Path:
    """A real torch zip whose pickle calls ``func(arg)`` on load; optionally rename the global."""
    buf = io.BytesIO()
    torch.save({"weight": {"enc_p.text_embedding.weight": torch.zeros(732, 4)}, "config": _Payload(func, arg)}, buf,
               pickle_protocol=protocol)
    buf.seek(0)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if rename and info.filename.endswith("data.pkl"):
                assert rename[0] in data
                data = data.replace(rename[0], rename[1])
            dst.writestr(info, data)
    return path


@pytest.mark.parametrize("variant", ["os.system", "builtins.eval", "builtins.eval-protocol4"])
def test_malicious_pickle_never_executes(variant, tmp_path):
    marker = tmp_path / "PWNED"
    if variant == "os.system":
        # os.system pickles as posix.system; rename it to the os.system spelling attackers use.
        p = _malicious_pth(tmp_path / "evil.pth", os.system, f"touch {marker}", (b"cposix\nsystem\n", b"cos\nsystem\n"))
    else:  # protocol 4 names globals with STACK_GLOBAL instead of GLOBAL
        p = _malicious_pth(tmp_path / "evil.pth", eval, f"open({str(marker)!r}, 'w').close()",
                           protocol=4 if variant.endswith("protocol4") else 2)

    _check(p, "refusing to load", variant.split("-")[0])
    assert not marker.exists()

    # The payload is live: an unsafe loader (what upstream does) really runs it.
    probe = tmp_path / "probe.pth"
    probe.write_bytes(p.read_bytes().replace(b"PWNED", b"PROBE"))
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(probe)!r}, weights_only=False)"],
                   capture_output=True)
    assert (tmp_path / "PROBE").exists()
    assert not marker.exists()


def test_malicious_global_hidden_next_to_hparams(fixtures_dir, tmp_path):
    """A real export with one extra dangerous global is refused as a whole."""
    marker = tmp_path / "PWNED2"
    p = _malicious_pth(tmp_path / "evil2.pth", os.system, f"touch {marker}", (b"cposix\nsystem\n", b"cos\nsystem\n"))
    r = run_cli("inspect", "--json", str(p))
    _assert_clean_failure(r, p, "os.system")
    assert not marker.exists()
