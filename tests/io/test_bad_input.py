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


def _torch_zip_with_pickle(path: Path, pickle_bytes: bytes, compress: bool = False) -> Path:
    """A real torch.save zip (its layout, version record, ...) whose data.pkl is replaced."""
    buf = io.BytesIO()
    torch.save({"weight": {}}, buf)
    buf.seek(0)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            if info.filename.endswith("data.pkl"):
                dst.writestr(info.filename, pickle_bytes, zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
            else:
                dst.writestr(info, src.read(info.filename))
    return path


def _cli_all(path: Path, *needles: str, tmp_path: Path):
    """inspect, rebuild and train each refuse it in one line, exit 2, the file untouched."""
    _check(path, *needles)
    before = _snapshot(path)
    r = run_cli("rebuild", str(path), "-o", str(tmp_path / "out"), env={"GSV_RAY_CACHE": str(tmp_path / "cache")})
    _assert_clean_failure(r, path, *needles)
    data = tmp_path / "exp"
    data.mkdir(exist_ok=True)
    r = run_cli("train", "--init", str(path), "--data", str(data), "-o", str(tmp_path / "run"), "--max-steps", "2",
                env={"GSV_RAY_CACHE": str(tmp_path / "cache")})
    _assert_clean_failure(r, path, *needles)
    assert _snapshot(path) == before


@pytest.mark.parametrize("kind", ["HParams", "dict"])
def test_cyclic_config_is_one_line(kind, tmp_path):
    """A config that contains itself (pickle's memo makes cycles cheap): upstream's HParams, or a dict."""
    from tests.support.schemafiles import _upstream_utils_module

    utils = _upstream_utils_module()
    if kind == "HParams":
        cfg = utils.HParams(train={"learning_rate": 1e-4})
        cfg.train.parent = cfg
    else:
        cfg = {"train": {"learning_rate": 1e-4}}
        cfg["train"]["parent"] = cfg
    p = tmp_path / "cyclic.pth"
    saved = sys.modules.get("utils")
    sys.modules["utils"] = utils  # pickled as utils.HParams, like upstream's
    try:
        torch.save({"weight": {"enc_p.text_embedding.weight": torch.zeros(732, 4)}, "config": cfg, "info": "x"}, p)
    finally:
        sys.modules.pop("utils") if saved is None else sys.modules.__setitem__("utils", saved)
    _cli_all(p, "refusing to load", "cycle", tmp_path=tmp_path)


def test_deeply_nested_pickle_is_one_line(tmp_path):
    depth = 100_000  # EMPTY_LIST x N, then APPEND x (N-1): lists nested N deep, 200 KB of pickle
    body = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    p = _torch_zip_with_pickle(tmp_path / "deep.pth", body)
    _cli_all(p, "refusing to load", "deeper than", tmp_path=tmp_path)


def test_decompression_bomb_is_refused_before_inflating(tmp_path):
    """A 3 MiB zip whose data.pkl inflates to 3 GiB: refused at once, without inflating it (before:
    30 s at 6.5 GB RSS)."""
    p = tmp_path / "bomb.pth"
    size = 3 << 30
    chunk = bytes(64 << 20)
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("bomb/data.pkl", "w", force_zip64=True) as f:
            for _ in range(size // len(chunk)):
                f.write(chunk)
    assert p.stat().st_size < 4 << 20
    with zipfile.ZipFile(p) as zf:  # a valid zip, declaring the 3 GiB
        assert zf.getinfo("bomb/data.pkl").file_size == size
    # VmHWM is this process's own peak: ru_maxrss is not, since Linux carries the peak of the memory a
    # process replaced at exec over, and a vforked child replaces the pytest process's (1.07 GB in CI).
    code = ("import re, sys; from gsv_ray.cli import main; rc = main(['inspect', sys.argv[1]]);"
            "print('RESULT', rc, re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])")
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=120)
    rc, rss_kb = r.stdout.split("RESULT")[1].split()
    assert int(rc) == 2 and "compressed" in r.stderr and str(p) in r.stderr, r.stderr
    assert int(rss_kb) < 512 << 10, rss_kb  # nothing inflated: peaked under 512 MiB (3+ GiB before; inspect of a real file: 236 MB)


def test_global_fetched_through_the_memo_is_named(tmp_path):
    """Protocol 4 with the module and name memoised (BINPUT), popped, decoy strings pushed, then
    fetched back (BINGET) for STACK_GLOBAL: refused as os.system before torch runs anything."""
    marker = tmp_path / "PWNED3"
    cmd = f"touch {marker}".encode()
    body = (b"\x80\x04"
            + b"\x8c\x02os" + b"q\x00" + b"\x8c\x06system" + b"q\x01" + b"00"  # memoise, then pop both
            + b"\x8c\x0bcollections" + b"\x8c\x0bOrderedDict" + b"00"       # decoys a naive scan would pair
            + b"h\x00" + b"h\x01" + b"\x93"                                  # BINGET 0, BINGET 1, STACK_GLOBAL
            + b"\x8c" + bytes([len(cmd)]) + cmd + b"\x85" + b"R" + b".")
    p = _torch_zip_with_pickle(tmp_path / "memo.pth", body)
    _check(p, "refusing to load", "os.system")
    assert not marker.exists()
    probe = tmp_path / "probe.pth"  # the payload is live for an unsafe loader
    probe.write_bytes(p.read_bytes())
    import pickle

    with zipfile.ZipFile(probe) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    pickle.loads(data)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["fifo", "char device"])
def test_special_files_are_named_for_what_they_are(kind, tmp_path):
    if kind == "fifo":
        p = tmp_path / "pipe.pth"
        os.mkfifo(p)
        _check(p, "FIFO")
    else:
        _check(Path("/dev/null"), "character device")
