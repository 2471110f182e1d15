"""Bad input: exit 2, one line on stderr naming the file, the problem and the fix; no traceback, no
library warnings; the file byte-for-byte and mtime unchanged. Malicious pickles never execute."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zipfile
import zlib
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
    r = run_cli("inspect", *args, str(path), in_process=True)
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
    torch.save(
        {"weight": {"enc_p.text_embedding.weight": torch.zeros(732, 4)}, "config": _Payload(func, arg)},
        buf,
        pickle_protocol=protocol,
    )
    buf.seek(0)
    with zipfile.ZipFile(buf) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if rename and info.filename.endswith("data.pkl"):
                assert rename[0] in data
                data = data.replace(rename[0], rename[1])
            dst.writestr(info, data)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["os.system", "builtins.eval", "builtins.eval-protocol4"])
def test_malicious_pickle_never_executes(variant, tmp_path):
    marker = tmp_path / "PWNED"
    if variant == "os.system":
        # os.system pickles as posix.system; rename it to the os.system spelling attackers use.
        p = _malicious_pth(tmp_path / "evil.pth", os.system, f"touch {marker}", (b"cposix\nsystem\n", b"cos\nsystem\n"))
    else:  # protocol 4 names globals with STACK_GLOBAL instead of GLOBAL
        p = _malicious_pth(
            tmp_path / "evil.pth",
            eval,
            f"open({str(marker)!r}, 'w').close()",
            protocol=4 if variant.endswith("protocol4") else 2,
        )

    _check(p, "refusing to load", variant.split("-")[0])
    assert not marker.exists()

    # The payload is live: an unsafe loader (what upstream does) really runs it.
    probe = tmp_path / "probe.pth"
    probe.write_bytes(p.read_bytes().replace(b"PWNED", b"PROBE"))
    subprocess.run(
        [sys.executable, "-c", f"import torch; torch.load({str(probe)!r}, weights_only=False)"], capture_output=True
    )
    assert (tmp_path / "PROBE").exists()
    assert not marker.exists()


def test_malicious_global_hidden_next_to_hparams(fixtures_dir, tmp_path):
    """A real export with one extra dangerous global is refused as a whole."""
    marker = tmp_path / "PWNED2"
    p = _malicious_pth(tmp_path / "evil2.pth", os.system, f"touch {marker}", (b"cposix\nsystem\n", b"cos\nsystem\n"))
    r = run_cli("inspect", "--json", str(p), in_process=True)
    _assert_clean_failure(r, p, "os.system")
    assert not marker.exists()


def test_prescan_asks_torchs_public_check_through_the_detagged_stream(fixtures_dir, tmp_path):
    """Issue #27 item 7: which globals are unsafe is torch's public
    ``get_unsafe_globals_in_checkpoint``, not its private allow-list. It refuses a version-tagged
    export as it is, so the pre-scan gives it the stream that shows ``PK`` in place of the tag."""
    from gsv_ray.io.safeload import _refused, _TagPatchedFile, safe_load

    tagged = fixtures_dir / "SoVITS_weights_v2Pro" / "gsvfix_e1_s2.pth"
    with pytest.raises(ValueError):
        torch.serialization.get_unsafe_globals_in_checkpoint(str(tagged))
    with _TagPatchedFile(open(tagged, "rb")) as stream:
        assert torch.serialization.get_unsafe_globals_in_checkpoint(stream) == ["utils.HParams"]
        assert _refused(safe_load(tagged).pickle_globals, stream) == []
    evil = _malicious_pth(tmp_path / "evil.pth", os.system, "true", (b"cposix\nsystem\n", b"cos\nsystem\n"))
    with zipfile.ZipFile(evil) as zf:
        from gsv_ray.io.safeload import scan_globals

        found = scan_globals(zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl"))))
    with open(evil, "rb") as raw:
        assert _refused(found, raw) == ["os.system"]


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
    r = run_cli(
        "rebuild",
        str(path),
        "-o",
        str(tmp_path / "out"),
        env={"GSV_RAY_CACHE": str(tmp_path / "cache")},
        in_process=True,
    )
    _assert_clean_failure(r, path, *needles)
    data = tmp_path / "exp"
    data.mkdir(exist_ok=True)
    r = run_cli(
        "train",
        "--init",
        str(path),
        "--data",
        str(data),
        "-o",
        str(tmp_path / "run"),
        "--max-steps",
        "2",
        env={"GSV_RAY_CACHE": str(tmp_path / "cache")},
        in_process=True,
    )
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


@pytest.mark.slow
def test_deeply_nested_pickle_is_one_line(tmp_path):
    depth = 100_000  # EMPTY_LIST x N, then APPEND x (N-1): lists nested N deep, 200 KB of pickle
    body = b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b"."
    p = _torch_zip_with_pickle(tmp_path / "deep.pth", body)
    _cli_all(p, "refusing to load", "deeper than", tmp_path=tmp_path)


def _zeros_zip64(path: Path, name: str, size: int, chunk: int = 64 << 20) -> Path:
    """A valid zip holding one deflated member of ``size`` zero bytes (zip64 sizes), written as
    ``zipfile`` with ``force_zip64`` writes it but without deflating every chunk: after a full flush
    the compressor starts afresh, so each further chunk of zeros deflates to the same bytes, which
    are repeated (8 s of deflate at level 9 for 3 GiB, before). The CRC is computed over all of it."""
    z = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(chunk)
    first, again = (z.compress(zeros) + z.flush(zlib.Z_FULL_FLUSH) for _ in range(2))
    assert z.compress(zeros) + z.flush(zlib.Z_FULL_FLUSH) == again and size % chunk == 0
    data = first + again * (size // chunk - 1) + z.flush()
    crc = 0
    for _ in range(size // chunk):
        crc = zlib.crc32(zeros, crc)
    raw, mask = name.encode(), 0xFFFFFFFF
    extra = struct.pack("<HHQQ", 1, 16, size, len(data))  # zip64: real sizes, 32-bit fields all ones
    fixed = struct.pack("<HHHHHIII", 45, 0, 8, 0, 0x21, crc, mask, mask)
    local = struct.pack("<I", 0x04034B50) + fixed + struct.pack("<HH", len(raw), len(extra)) + raw + extra
    central = (
        struct.pack("<IH", 0x02014B50, 45)
        + fixed
        + struct.pack("<HHHHHII", len(raw), len(extra), 0, 0, 0, 0, 0)
        + raw
        + extra
    )
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    path.write_bytes(local + data + central + end)
    return path


@pytest.mark.slow
def test_decompression_bomb_is_refused_before_inflating(tmp_path):
    """A 3 MiB zip whose data.pkl inflates to 3 GiB: refused at once, without inflating it (before:
    30 s at 6.5 GB RSS)."""
    size = 3 << 30
    p = _zeros_zip64(tmp_path / "bomb.pth", "bomb/data.pkl", size)
    assert p.stat().st_size < 4 << 20
    with zipfile.ZipFile(p) as zf:  # a valid zip, declaring the 3 GiB
        assert zf.getinfo("bomb/data.pkl").file_size == size
    # VmHWM is this process's own peak: ru_maxrss is not, since Linux carries the peak of the memory a
    # process replaced at exec over, and a vforked child replaces the pytest process's (1.07 GB in CI).
    code = (
        "import re, sys; from gsv_ray.cli import main; rc = main(['inspect', sys.argv[1]]);"
        "print('RESULT', rc, re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])"
    )
    r = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, timeout=120)
    rc, rss_kb = r.stdout.split("RESULT")[1].split()
    assert int(rc) == 2 and "compressed" in r.stderr and str(p) in r.stderr, r.stderr
    assert int(rss_kb) < 512 << 10, (
        rss_kb
    )  # nothing inflated: peaked under 512 MiB (3+ GiB before; inspect of a real file: 236 MB)


def test_global_fetched_through_the_memo_is_named(tmp_path):
    """Protocol 4 with the module and name memoised (BINPUT), popped, decoy strings pushed, then
    fetched back (BINGET) for STACK_GLOBAL: refused as os.system before torch runs anything."""
    marker = tmp_path / "PWNED3"
    cmd = f"touch {marker}".encode()
    body = (
        b"\x80\x04"
        + b"\x8c\x02os"
        + b"q\x00"
        + b"\x8c\x06system"
        + b"q\x01"
        + b"00"  # memoise, then pop both
        + b"\x8c\x0bcollections"
        + b"\x8c\x0bOrderedDict"
        + b"00"  # decoys a naive scan would pair
        + b"h\x00"
        + b"h\x01"
        + b"\x93"  # BINGET 0, BINGET 1, STACK_GLOBAL
        + b"\x8c"
        + bytes([len(cmd)])
        + cmd
        + b"\x85"
        + b"R"
        + b"."
    )
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


# ---------------------------------------------------------------- unbounded work from small files (#24 item 7)
#: What a hostile file may cost a command that refuses it: wall time and address space (RLIMIT_AS; the
#: CLI importing torch and reading a real export stays well under it).
BOUND_SECONDS = 10
BOUND_AS = 3 << 30


def _bounded_cli(*args: str, env: dict | None = None):
    """The real CLI under an address-space limit and a timeout; returns (result, seconds)."""
    import resource
    import time

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (BOUND_AS, BOUND_AS))

    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "gsv_ray", *args],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit,
        env={**os.environ, **(env or {})},
    )
    return r, time.monotonic() - t0


def _shared_config_file(path: Path, n: int) -> Path:
    """``x = {'a': x, 'b': x}`` applied ``n`` times in the config: a few KB of pickle (the memo shares
    every level), 2**n paths when written out as a tree."""
    x: dict = {"learning_rate": 1e-4}
    for _ in range(n):
        x = {"a": x, "b": x}
    torch.save(
        {"weight": {"enc_p.text_embedding.weight": torch.zeros(732, 4)}, "config": {"train": x}, "info": "x"}, path
    )
    return path


@pytest.mark.slow
@pytest.mark.parametrize("n", [20, 40])
def test_shared_config_references_are_refused_quickly(n, tmp_path):
    """Before: N=20 took 11.5 s / 625 MB, N=40 never returned (every shared reference copied)."""
    p = _shared_config_file(tmp_path / f"dag{n}.pth", n)
    assert p.stat().st_size < 64 << 10
    env = {"GSV_RAY_CACHE": str(tmp_path / "cache")}
    data = tmp_path / "exp"
    data.mkdir()
    for args in (
        ("inspect", str(p)),
        ("inspect", "--json", str(p)),
        ("rebuild", str(p)),
        ("train", "--init", str(p), "--data", str(data), "-o", str(tmp_path / "run"), "--max-steps", "2"),
    ):
        r, seconds = _bounded_cli(*args, env=env)
        _assert_clean_failure(r, p, "refusing to load", "expands to more than")
        assert seconds < BOUND_SECONDS, (args, seconds)


def test_shared_references_within_the_bound_stay_shared():
    """A shared container is converted once: the plain copy shares it too (no tree expansion)."""
    from gsv_ray.io.safeload import HParamsStandIn, to_plain

    leaf = HParamsStandIn()
    leaf.__dict__.update(learning_rate=1e-4)
    x = {"a": leaf, "b": leaf}
    plain = to_plain({"c": x, "d": [x, x]})
    assert plain["c"]["a"] == {"learning_rate": 1e-4} and plain["c"]["a"] is plain["c"]["b"]
    assert plain["d"][0] is plain["d"][1] is plain["c"]


def _yaml_alias_bomb(levels: int = 9) -> str:
    """A 1 KB YAML whose ``val_names`` value expands to 9**levels strings (billion laughs)."""
    lines = ["val_names:", '  - &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"  - &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "tune", "semantic"])
def test_yaml_alias_bomb_is_refused_quickly(command, tmp_path):
    """Before: a 1 KB alias bomb in val_names reached 14.4 GB RSS (the whole value printed in the type error)."""
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(_yaml_alias_bomb())
    assert cfg.stat().st_size < 1200
    r, seconds = _bounded_cli(command, "--config", str(cfg))
    _assert_clean_failure(r, cfg, "expands to more than")
    assert seconds < BOUND_SECONDS and len(r.stderr) < 400, (seconds, r.stderr[:400])


def test_values_echoed_in_errors_are_bounded(tmp_path):
    """A long value of the wrong type is shown cut to ~80 characters, not whole (before: a 24 KB line)."""
    cfg = tmp_path / "long.yaml"
    cfg.write_text(
        "val_names: ["
        + ", ".join(f'"name_{i:05d}"' for i in range(3000))
        + "]\n"
        + "init: x.pth\ndata: exp\noutput_dir: run\n"
    )
    r = run_cli("train", "--config", str(cfg), in_process=True)
    assert r.returncode == 2 and "--val-names must be a string" in r.stderr, r.stderr
    assert len(r.stderr) < 300 and "name_00000" in r.stderr and "..." in r.stderr, r.stderr
    key = "k" * 5000
    cfg.write_text(f"? {key}\n: 1\n")  # the explicit form: a plain key is limited to 1024 characters
    r = run_cli("train", "--config", str(cfg), in_process=True)
    assert r.returncode == 2 and "unknown option" in r.stderr and key not in r.stderr, r.stderr


@pytest.mark.slow
def test_shared_tuple_as_dict_key_is_refused_before_torch_hashes_it(tmp_path):
    """A 1 KB pickle: a dict key that is a tuple holding one tuple twice, 40 levels deep. torch's
    unpickler hashes the key (2**40 items) before we see the object; refused from the pickle's opcodes."""
    import struct

    body = b"\x80\x02" + b"X" + struct.pack("<I", 2) + b"lr" + b"\x85q\x00"  # ("lr",), memo 0
    for i in range(1, 41):  # (t[i-1], t[i-1]), memo i (left on the stack: torch's unpickler has no POP)
        body += b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86" + b"q" + bytes([i])
    body += b"}h" + bytes([40]) + b"K\x01s."  # {t40: 1}
    p = _torch_zip_with_pickle(tmp_path / "tuplekey.pth", body)
    assert p.stat().st_size < 2048
    for args in (("inspect", str(p)), ("rebuild", str(p))):
        r, seconds = _bounded_cli(*args, env={"GSV_RAY_CACHE": str(tmp_path / "cache")})
        _assert_clean_failure(r, p, "refusing to load", "unbounded time")
        assert seconds < BOUND_SECONDS, (args, seconds)
