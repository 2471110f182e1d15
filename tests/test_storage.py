"""gsv_ray.storage against real pyarrow filesystems: local paths, file:// and a real S3 server (moto) on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from gsv_ray import storage
from gsv_ray.errors import GsvError
from tests.support.s3server import loopback_s3

EXPERIMENT = {
    "2-name2text.txt": b"a.wav\tphones\tword2ph\ttext\n",
    "6-name2semantic.tsv": b"item_name\tsemantic_audio\na.wav\t1 2 3\n",
    "4-cnhubert/a.wav.pt": os.urandom(3000),
    "5-wav32k/a.wav": os.urandom(5000),
    "3-bert/deep/nested/a.pt": b"\x00" * 17,
}


def one_line(err: pytest.ExceptionInfo[GsvError]) -> str:
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------- local paths
def test_is_uri_and_join() -> None:
    assert storage.is_uri("s3://b/k") and storage.is_uri("file:///x") and storage.is_uri("gs://b")
    assert not storage.is_uri("/abs/path") and not storage.is_uri("rel/path") and not storage.is_uri("C:\\x")
    assert storage.join("s3://b", "runs", "exp/") == "s3://b/runs/exp"
    assert storage.join("s3://b/pre/", "/x") == "s3://b/pre/x"
    assert storage.join("s3://b/p?endpoint_override=127.0.0.1:9", "c") == "s3://b/p/c?endpoint_override=127.0.0.1:9"
    assert storage.join("file:///tmp/a", "b") == "file:///tmp/a/b"
    assert storage.join("/tmp/a", "b", "c") == os.path.join("/tmp/a", "b", "c")


def test_resolve_local_and_file_uri(tmp_path: Path) -> None:
    fs, path = storage.resolve(tmp_path)
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path)
    fs, path = storage.resolve(f"file://{tmp_path}")
    assert isinstance(fs, pafs.LocalFileSystem) and Path(path) == tmp_path
    fs, path = storage.resolve("relative/dir")
    assert path == os.path.abspath("relative/dir")
    with pytest.raises(GsvError) as err:
        storage.resolve("file://relative/x")
    assert "file:///abs/path" in one_line(err)


def test_fetch_local_returns_path_as_is(tmp_path: Path) -> None:
    f = tmp_path / "model.ckpt"
    f.write_bytes(b"weights")
    d = tmp_path / "exp"
    write_tree(d, EXPERIMENT)
    cache = tmp_path / "cache"
    assert storage.fetch(f, cache) == f
    assert storage.fetch(str(d), cache) == d
    assert storage.fetch(f"file://{d}", cache) == d
    assert not cache.exists()  # nothing copied for local inputs
    with pytest.raises(GsvError) as err:
        storage.fetch(tmp_path / "missing.pth", cache)
    assert "missing.pth" in one_line(err) and "does not exist" in str(err.value)


def test_check_writable_local(tmp_path: Path) -> None:
    storage.check_writable(tmp_path / "new" / "storage")  # created on the way
    storage.check_writable(f"file://{tmp_path}")
    assert [p.name for p in (tmp_path / "new" / "storage").iterdir()] == []  # the probe was deleted
    (tmp_path / "afile").write_text("x")
    with pytest.raises(GsvError) as err:
        storage.check_writable(tmp_path / "afile" / "sub")  # a file where a folder must go
    assert "afile" in one_line(err) and "Fix:" in str(err.value)


def test_check_writable_read_only_dir() -> None:
    """A real read-only directory. Root ignores mode bits, so as root the probe runs as 'nobody'."""
    top = Path(tempfile.mkdtemp(prefix="gsv-ro-"))
    try:
        top.chmod(0o755)
        ro = top / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        if os.geteuid() != 0:
            with pytest.raises(GsvError) as err:
                storage.check_writable(ro)
            text = one_line(err)
        else:
            code = textwrap.dedent(f"""
                import os, sys
                from gsv_ray import storage  # imported as root: nobody may not read the stdlib
                from gsv_ray.errors import GsvError
                os.setgid(65534); os.setuid(65534)
                try:
                    storage.check_writable({str(ro)!r})
                except GsvError as e:
                    print(e); sys.exit(3)
                """)
            repo = Path(__file__).resolve().parent.parent
            env = dict(os.environ, PYTHONPATH=str(repo), HOME=str(top))
            proc = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, cwd=str(top)
            )
            assert proc.returncode == 3, proc.stderr
            text = proc.stdout.strip()
            assert "\n" not in text and "Traceback" not in proc.stderr
        assert str(ro) in text and "permission denied" in text and "Fix:" in text
    finally:
        (top / "ro").chmod(0o755)
        shutil.rmtree(top, ignore_errors=True)


def test_is_node_local(tmp_path: Path) -> None:
    assert storage.is_node_local(tmp_path) is True
    assert storage.is_node_local(tmp_path / "not" / "yet" / "created") is True
    assert storage.is_node_local(f"file://{tmp_path}") is True
    assert storage.is_node_local("s3://bucket/prefix") is False
    assert storage.is_node_local("gs://bucket/prefix") is False
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        "srv:/export /mnt/shared nfs4 rw 0 0\n"
        "gcsfuse /mnt/gcs fuse.gcsfuse rw 0 0\n"
        "/dev/vdb /mnt/shared/local\\040disk ext4 rw 0 0\n"
    )
    m = str(mounts)
    assert storage.is_node_local("/mnt/shared/ckpt", mounts_file=m) is False
    assert storage.is_node_local("file:///mnt/gcs/x", mounts_file=m) is False
    assert storage.is_node_local("/mnt/shared/local disk/x", mounts_file=m) is True
    assert storage.is_node_local("/mnt/sharedx", mounts_file=m) is True
    assert storage.is_node_local("/x", mounts_file=str(tmp_path / "no-such-table")) is True


def test_unsupported_scheme_is_one_line(tmp_path: Path) -> None:
    for call in (storage.resolve, storage.check_writable, storage.is_node_local, lambda u: storage.fetch(u, tmp_path)):
        with pytest.raises(GsvError) as err:
            call("hdfs://namenode/user/x")
        text = one_line(err)
        assert "hdfs://namenode/user/x" in text and "unsupported" in text and "s3://" in text


def test_gs_uri_resolves_offline() -> None:
    fs, path = storage.resolve("gs://my-bucket/voices/exp/")
    assert isinstance(fs, pafs.GcsFileSystem) and path == "my-bucket/voices/exp"
    assert storage.join("gs://my-bucket", "ckpt") == "gs://my-bucket/ckpt"


def test_display_masks_secrets() -> None:
    shown = storage.display("s3://AK:SK@b/k?access_key=AK&secret_key=SK&endpoint_override=127.0.0.1:9")
    assert "SK" not in shown and "AK" not in shown and "endpoint_override=127.0.0.1:9" in shown
    assert shown.startswith("s3://***@b/k?")  # the user sees that credentials were given, not which


def test_credentials_in_a_uri_move_to_the_environment(monkeypatch) -> None:
    """Issue 24.1: the URI Ray and our records get holds no keys; pyarrow then reads them from AWS_*."""
    from gsv_ray.errors import ConfigError

    monkeypatch.setenv("AWS_SESSION_TOKEN", "old")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    clean = storage.take_credentials("s3://AK:S%2FK@b/p?endpoint_override=h:9", flag="--storage", joined=False)
    assert clean == "s3://b/p?endpoint_override=h:9"
    assert (os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]) == ("AK", "S/K")
    assert "AWS_SESSION_TOKEN" not in os.environ
    assert storage.take_credentials("s3://b/p", flag="--storage", joined=True) == "s3://b/p"
    with pytest.raises(ConfigError, match="cluster") as e:
        storage.take_credentials("s3://b/p?secret_key=SK", flag="--storage", joined=True)
    assert "SK" not in str(e.value)


# --------------------------------------------------------------------------------------------- S3 on loopback
@pytest.fixture(scope="module")
def s3() -> Iterator[dict]:
    yield from loopback_s3()


def upload(fs: pafs.S3FileSystem, prefix: str, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        with fs.open_output_stream(f"{prefix}/{rel}") as out:
            out.write(data)


def test_s3_resolve_uses_endpoint_env_and_query(s3: dict) -> None:
    fs, path = storage.resolve("s3://voices/a/")
    assert isinstance(fs, pafs.S3FileSystem) and path == "voices/a"
    assert fs.get_file_info("voices").type == pafs.FileType.Directory  # reached the loopback server
    # An explicit ?endpoint_override= wins over the environment.
    os.environ["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"
    try:
        fs, path = storage.resolve(f"s3://voices?endpoint_override=127.0.0.1:{s3['port']}&scheme=http")
        assert path == "voices" and fs.get_file_info("voices").type == pafs.FileType.Directory
    finally:
        os.environ["AWS_ENDPOINT_URL"] = s3["endpoint"]


def test_s3_fetch_file_and_dir_then_reuse(s3: dict, tmp_path: Path) -> None:
    fs, log = s3["fs"], s3["log"]
    weights = os.urandom(200_000)
    upload(fs, "voices/pretrained", {"s1bert.ckpt": weights})
    upload(fs, "voices/exps/alice", EXPERIMENT)
    cache = tmp_path / "cache"

    f = storage.fetch("s3://voices/pretrained/s1bert.ckpt", cache)
    assert f.read_bytes() == weights and f.name == "s1bert.ckpt"
    assert cache / "fetch" in f.parents
    d = storage.fetch("s3://voices/exps/alice/", cache)
    assert d.is_dir() and d.name == "alice" and read_tree(d) == EXPERIMENT
    assert not list((cache / "fetch").glob("*/.tmp-*"))  # temp folders renamed away

    f_stat, d_stat = f.stat(), (d / "5-wav32k" / "a.wav").stat()
    gets_before = log.gets("s1bert.ckpt"), log.gets("a.wav")
    assert gets_before[0] >= 1 and gets_before[1] >= 1  # the counter sees the first download
    f2 = storage.fetch("s3://voices/pretrained/s1bert.ckpt", cache)
    d2 = storage.fetch("s3://voices/exps/alice", cache)
    assert (f2, d2) == (f, d)
    assert (f2.stat().st_mtime_ns, f2.stat().st_ino) == (f_stat.st_mtime_ns, f_stat.st_ino)
    assert (d2 / "5-wav32k" / "a.wav").stat().st_mtime_ns == d_stat.st_mtime_ns
    assert (log.gets("s1bert.ckpt"), log.gets("a.wav")) == gets_before  # no object was downloaded again

    # A changed remote object (size differs) is fetched again into a fresh folder; the old copy is dropped.
    upload(fs, "voices/exps/alice", {"6-name2semantic.tsv": b"item_name\tsemantic_audio\na.wav\t1 2 3 4\n"})
    d3 = storage.fetch("s3://voices/exps/alice", cache)
    assert d3 != d and not d.exists()
    assert (d3 / "6-name2semantic.tsv").read_bytes().endswith(b"1 2 3 4\n")


def test_s3_missing_key_and_bucket_are_one_line(s3: dict, tmp_path: Path) -> None:
    with pytest.raises(GsvError) as err:
        storage.fetch("s3://voices/pretrained/nope.ckpt", tmp_path)
    text = one_line(err)
    assert "s3://voices/pretrained/nope.ckpt" in text and "does not exist" in text and "Fix:" in text
    with pytest.raises(GsvError) as err:
        storage.fetch("s3://no-such-bucket/x.ckpt", tmp_path)
    text = one_line(err)
    assert "s3://no-such-bucket/x.ckpt" in text and "bucket 'no-such-bucket' does not exist" in text


def test_s3_concurrent_fetches_download_once(s3: dict, tmp_path: Path) -> None:
    """Workers on one node asking for the same folder at once: one download, one shared copy."""
    upload(s3["fs"], "voices/exps/bob", {"only-bob.bin": os.urandom(50_000), "sub/b.txt": b"b"})
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: storage.fetch("s3://voices/exps/bob", tmp_path / "c"), range(4)))
    assert len(set(paths)) == 1 and (paths[0] / "sub" / "b.txt").read_bytes() == b"b"
    assert s3["log"].gets("only-bob.bin") == 1


def test_s3_check_writable(s3: dict) -> None:
    storage.check_writable("s3://voices/runs/prefix")
    storage.check_writable("s3://voices")
    leftovers = s3["fs"].get_file_info(pafs.FileSelector("voices/runs", recursive=True, allow_not_found=True))
    assert not [i for i in leftovers if storage._PROBE_PREFIX in i.path]  # the marker was deleted
    with pytest.raises(GsvError) as err:
        storage.check_writable("s3://no-such-bucket/prefix")
    text = one_line(err)
    assert "s3://no-such-bucket/prefix" in text and "bucket does not exist" in text and "Fix:" in text


def test_s3_unreachable_endpoint_is_one_line(s3: dict, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(GsvError) as err:
        storage.fetch(f"s3://voices/x.ckpt?endpoint_override=127.0.0.1:{dead}&scheme=http", tmp_path)
    assert "s3://voices/x.ckpt" in one_line(err)
    assert time.monotonic() - t0 < 30


def test_run_records_mask_credentials_in_input_uris() -> None:
    """config.json, run_config.json and W&B's config come from TrainConfig.to_json: no keys in them."""
    from gsv_ray.train.config import TrainConfig

    rec = TrainConfig(init="s3://AK:SK@b/i.pth", data="s3://b/exp?secret_key=SK", output_dir="o").to_json()
    assert rec["init"] == "s3://***@b/i.pth" and rec["data"] == "s3://b/exp?secret_key=***"
