"""Local paths and ``file://``, ``s3://``, ``gs://`` URIs for ``--init/--base/--base-d/--data/--storage``.

Everything goes through ``pyarrow.fs`` because Ray Train already uses it for ``storage_path``: the pair that
:func:`resolve` returns can be handed to ``RunConfig(storage_path=path, storage_filesystem=fs)`` unchanged.
No network is touched unless the user names a remote URI (and its endpoint/credentials, the standard AWS/GCS way).

Remote inputs are copied once into a local cache (:func:`fetch`): workers and the rebuild then read local files,
and a second run reuses the copy while the remote object's size and mtime are unchanged.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import pyarrow.fs as pafs

from gsv_ray.atomic import atomic_dir
from gsv_ray.errors import ConfigError, GsvError, folded
from gsv_ray.masking import SECRET_QUERY_KEYS, has_credentials, mask

REMOTE_SCHEMES = frozenset({"s3", "gs", "gcs"})
SUPPORTED_SCHEMES = frozenset({"file"}) | REMOTE_SCHEMES
# Filesystem types whose contents every node of a cluster can see (``/proc/mounts`` third column).
NETWORK_FS_TYPES = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb",
        "smb3",
        "smbfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "cephfs",
        "glusterfs",
        "afs",
        "ocfs2",
        "gfs2",
        "panfs",
        "wekafs",
        "orangefs",
        "pvfs2",
        "quobyte",
    }
)
_URI_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_PROBE_PREFIX = ".gsv-ray-write-probe-"


def is_uri(s: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...``; plain (relative or absolute) paths are not URIs."""
    return bool(_URI_RE.match(os.fspath(s)))


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower()


def display(uri_or_path: str | os.PathLike[str]) -> str:
    """The URI as it may be shown in messages, logs and records: credentials masked (:func:`gsv_ray.masking.mask`)."""
    return mask(uri_or_path)


#: the AWS SDK's environment variables for what an ``s3://`` URI may carry (user:secret@, query keys)
_S3_CREDENTIAL_ENV = {
    "access_key": "AWS_ACCESS_KEY_ID",
    "secret_key": "AWS_SECRET_ACCESS_KEY",
    "session_token": "AWS_SESSION_TOKEN",
}


def take_credentials(uri: str, *, flag: str, joined: bool) -> str:
    """``uri`` without the credentials written into it; they go into this process's ``AWS_*``
    environment instead, which the local Ray we start (and its workers) inherit.

    Why: a filesystem built from a URI with keys carries them, and Ray pickles the filesystem into
    its experiment state on the storage (``tuner.pkl``, the searcher state); from the environment
    pyarrow's S3 filesystem reads them itself and pickles none. On a cluster we joined, the other
    nodes cannot see this environment: refused with one line (their instance role or environment
    must hold the keys). ``flag`` names the option in that line."""
    if not is_uri(uri) or not has_credentials(uri):
        return uri
    parts = urlsplit(uri)
    if _scheme(uri) != "s3":
        raise ConfigError(
            f"credentials inside the {flag} URI are not supported for {parts.scheme}://",
            path=display(uri),
            fix="remove them and use GOOGLE_APPLICATION_CREDENTIALS",
        )
    if joined:
        raise ConfigError(
            f"credentials inside the {flag} URI would reach only this machine, not the cluster's nodes",
            path=display(uri),
            fix="give the nodes an instance role or AWS_ACCESS_KEY_ID/"
            f"AWS_SECRET_ACCESS_KEY, and pass {flag} without them",
        )
    query = parse_qsl(parts.query, keep_blank_values=True)
    found = {k: v for k, v in query if k in _S3_CREDENTIAL_ENV}
    if parts.username is not None:
        found.setdefault("access_key", unquote(parts.username))
    if parts.password is not None:
        found.setdefault("secret_key", unquote(parts.password))
    if "access_key" in found or "secret_key" in found:
        os.environ.pop("AWS_SESSION_TOKEN", None)  # a token of the environment's keys would not match these
    for key, value in found.items():
        os.environ[_S3_CREDENTIAL_ENV[key]] = value
    netloc = parts.netloc.rsplit("@", 1)[-1]
    kept = urlencode([(k, v) for k, v in query if k not in SECRET_QUERY_KEYS], safe=":/")
    return urlunsplit((parts.scheme, netloc, parts.path, kept, parts.fragment))


def _check_scheme(uri: str) -> str:
    scheme = _scheme(uri)
    if scheme not in SUPPORTED_SCHEMES:
        raise GsvError(
            f"unsupported storage scheme '{scheme}://'",
            path=display(uri),
            fix="use a local path, file://, s3:// or gs://",
        )
    return scheme


def _with_env_endpoint(uri: str) -> str:
    """Add ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` as ``endpoint_override`` unless the URI names one.

    Done explicitly (not left to the AWS SDK) so a custom endpoint (MinIO, Ceph RGW, a test server) behaves the
    same across pyarrow versions, and so pyarrow skips its bucket-region lookup against AWS.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return uri
    parts = urlsplit(uri)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "endpoint_override" for k, _ in query):
        return uri
    query.append(("endpoint_override", endpoint))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query, safe=":/"), parts.fragment))


def _explain(exc: BaseException, uri: str, action: str) -> GsvError:
    """Turn a pyarrow/OS error into one line naming the URI, what went wrong and what to do."""
    if isinstance(exc, GsvError):
        return exc
    text = str(exc)
    upper = text.upper()
    shown = display(uri)
    remote = is_uri(uri) and _scheme(uri) in REMOTE_SCHEMES
    if "NO_SUCH_BUCKET" in upper or "NOSUCHBUCKET" in upper or "BUCKET DOES NOT EXIST" in upper:
        return GsvError(
            f"cannot {action}: the bucket does not exist", path=shown, fix="create the bucket or correct the URI"
        )
    if isinstance(exc, FileNotFoundError) or "NO_SUCH_KEY" in upper or (remote and "NOT FOUND" in upper):
        return GsvError(f"cannot {action}: it does not exist", path=shown, fix="check the path or URI")
    if (
        isinstance(exc, PermissionError)
        or "ACCESS_DENIED" in upper
        or "ACCESSDENIED" in upper
        or "FORBIDDEN" in upper
        or "PERMISSION" in upper
    ):
        fix = (
            "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_PROFILE, or "
            "GOOGLE_APPLICATION_CREDENTIALS) and the bucket policy"
            if remote
            else "choose a directory you can write to, or fix its permissions"
        )
        return GsvError(f"cannot {action}: permission denied ({folded(exc)})", path=shown, fix=fix)
    if any(s in upper for s in ("INVALID_ACCESS_KEY", "SIGNATURE", "CREDENTIAL", "EXPIRED", "TOKEN")):
        return GsvError(
            f"cannot {action}: credentials were rejected ({folded(exc)})",
            path=shown,
            fix="check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN or AWS_PROFILE",
        )
    if "NETWORK_CONNECTION" in upper or "CONNECT TO SERVER" in upper or "RESOLVE HOST" in upper:
        return GsvError(
            f"cannot {action}: the storage endpoint cannot be reached ({folded(exc)})",
            path=shown,
            fix="check the network and AWS_ENDPOINT_URL / ?endpoint_override=",
        )
    if isinstance(exc, NotADirectoryError):
        return GsvError(f"cannot {action}: a parent of it is a file", path=shown, fix="choose another path")
    return GsvError(
        f"cannot {action} ({folded(exc)})",
        path=shown,
        fix="check the URI, its credentials and that the storage is reachable",
    )


def resolve(uri_or_path: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or a ``file://``/``s3://``/``gs://`` URI.

    The pair is what ``ray.train.RunConfig(storage_path=path, storage_filesystem=fs)`` expects. Local paths come
    back absolute (``~`` expanded); remote paths come back as ``bucket/key`` without a trailing slash.
    """
    s = os.fspath(uri_or_path)
    if not s:
        raise GsvError("empty path", fix="give a local path or a file://, s3:// or gs:// URI")
    if not is_uri(s):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(s))
    scheme = _check_scheme(s)
    target = _with_env_endpoint(s) if scheme == "s3" else s
    try:
        fs, path = pafs.FileSystem.from_uri(target)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        if scheme == "file":
            raise GsvError(
                "a file:// URI needs an absolute path (file:///abs/path)",
                path=display(s),
                fix="write file:///abs/path or a plain path",
            ) from None
        raise _explain(exc, s, "open the storage") from None
    if scheme != "file":
        path = path.rstrip("/")
    return fs, path


def is_local(uri_or_path: str | os.PathLike[str]) -> bool:
    """True for plain paths and ``file://`` URIs: what this process can open without copying."""
    s = os.fspath(uri_or_path)
    return not is_uri(s) or _check_scheme(s) == "file"


def local_path(uri_or_path: str | os.PathLike[str]) -> Path:
    """The local path behind a plain path or ``file://`` URI (absolute)."""
    s = os.fspath(uri_or_path)
    if is_uri(s):
        if _check_scheme(s) != "file":
            raise GsvError("not a local path", path=display(s), fix="use fetch() for remote URIs")
        return Path(resolve(s)[1])
    return Path(os.path.abspath(os.path.expanduser(s)))


def join(uri: str | os.PathLike[str], *parts: str) -> str:
    """Append path parts to a path or URI, keeping a URI's scheme, bucket and query (e.g. endpoint_override)."""
    s = os.fspath(uri)
    clean = [p.strip("/") for p in parts if p and p.strip("/")]
    if not is_uri(s):
        return os.path.join(s, *clean)
    sp = urlsplit(s)
    path = "/".join([sp.path.rstrip("/")] + clean)
    if sp.netloc and path and not path.startswith("/"):
        path = "/" + path
    return urlunsplit((sp.scheme, sp.netloc, path, sp.query, sp.fragment))


def _mounts(mounts_file: str) -> list[tuple[str, str]]:
    """``(mount point, fs type)`` pairs; mount points are octal-unescaped as the kernel writes them."""
    out = []
    try:
        with open(mounts_file, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 3:
                    point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
                    out.append((point, fields[2]))
    except OSError:
        return []
    return out


def is_node_local(uri_or_path: str | os.PathLike[str], *, mounts_file: str = "/proc/mounts") -> bool:
    """Whether only this node can see the location (so a multi-node job cannot share checkpoints there).

    ``s3://``/``gs://`` are shared. Plain paths and ``file://`` are node-local unless their nearest existing
    ancestor sits on a network filesystem (NFS, SMB/CIFS, Lustre, GPFS, BeeGFS, Ceph, ``fuse.*``...) according to
    ``mounts_file``. When the mount table cannot be read the answer is the safe one: node-local.
    """
    s = os.fspath(uri_or_path)
    if is_uri(s) and _check_scheme(s) in REMOTE_SCHEMES:
        return False
    p, missing = local_path(s), []
    while not p.exists() and p.parent != p:  # a storage folder may not exist yet: it will live on its ancestor
        missing.insert(0, p.name)
        p = p.parent
    real = os.path.join(os.path.realpath(p), *missing)
    best, best_type = "", ""
    for point, fstype in _mounts(mounts_file):
        norm = point.rstrip("/") or "/"
        inside = real == norm or real.startswith(norm.rstrip("/") + "/")
        if inside and len(norm) >= len(best):  # later entries over the same point shadow earlier ones
            best, best_type = norm, fstype
    fstype = best_type.lower()
    shared = fstype in NETWORK_FS_TYPES or fstype.startswith("fuse.") or fstype.split(".")[0] in NETWORK_FS_TYPES
    return not shared


def check_writable(uri_or_path: str | os.PathLike[str]) -> None:
    """Fail early with one line if the storage cannot take checkpoints: write and delete a small marker object.

    A local directory is created if missing (Ray would create it anyway); a bucket is never created.
    """
    s = os.fspath(uri_or_path)
    fs, path = resolve(s)
    marker = f"{path.rstrip('/')}/{_PROBE_PREFIX}{uuid.uuid4().hex}"
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(path, recursive=True)
        with fs.open_output_stream(marker) as out:
            out.write(b"gsv-ray write probe\n")
        fs.delete_file(marker)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line
        raise _explain(exc, s, "write to the storage (it must hold checkpoints)") from None


@contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    """An exclusive lock across processes on this node, so concurrent fetches of one URI download it once."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _listing(fs: pafs.FileSystem, path: str, info: pafs.FileInfo) -> list[tuple[str, int, int]]:
    """``(relative path, size, mtime_ns)`` for every file: the version stamp a cached copy is checked against."""
    if info.type == pafs.FileType.File:
        return [("", int(info.size or 0), int(info.mtime_ns or 0))]
    prefix = path.rstrip("/") + "/"
    out = []
    for child in fs.get_file_info(pafs.FileSelector(path, recursive=True)):
        if child.type == pafs.FileType.File:
            rel = child.path[len(prefix) :] if child.path.startswith(prefix) else child.base_name
            if Path(rel).name.startswith(_PROBE_PREFIX):
                continue
            out.append((rel, int(child.size or 0), int(child.mtime_ns or 0)))
    return sorted(out)


def _cache_key(uri: str, path: str) -> str:
    """One folder per remote location: scheme, bucket/key and endpoint (credentials left out)."""
    scheme = _scheme(uri)
    target = _with_env_endpoint(uri) if scheme == "s3" else uri
    query = sorted((k, v) for k, v in parse_qsl(urlsplit(target).query) if k not in SECRET_QUERY_KEYS)
    return _hash(f"{scheme}://{path}?{urlencode(query)}")


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _not_found(fs: pafs.FileSystem, path: str, uri: str) -> GsvError:
    """The one line for a remote path that does not exist: its bucket, when that is what is missing."""
    bucket = path.split("/", 1)[0]
    try:
        no_bucket = bucket != path and fs.get_file_info(bucket).type == pafs.FileType.NotFound
    except Exception:  # noqa: BLE001 - only refines the message
        no_bucket = False
    if no_bucket:
        return GsvError(
            f"the bucket '{bucket}' does not exist",
            path=display(uri),
            fix="correct the bucket name or the endpoint (AWS_ENDPOINT_URL / ?endpoint_override=)",
        )
    return GsvError("does not exist", path=display(uri), fix="check the URI (bucket, key and endpoint)")


def fetch(uri_or_path: str | os.PathLike[str], cache_root: str | os.PathLike[str]) -> Path:
    """A local path holding the file or directory ``uri_or_path`` names.

    Local paths (and ``file://``) are returned as they are once they exist. A remote file or directory is copied
    to ``cache_root/fetch/<hash of URI>/<hash of listing>/<name>``: downloaded into a temporary folder and renamed
    into place, so a present copy is always complete; reused while every file's size and mtime are unchanged.
    Concurrent fetches of one URI on a node wait for each other and download once.
    """
    s = os.fspath(uri_or_path)
    if is_local(s):
        p = local_path(s)
        if not p.exists():
            raise GsvError("does not exist", path=display(s), fix="check the path")
        return p
    fs, path = resolve(s)
    try:
        info = fs.get_file_info(path)
    except Exception as exc:  # noqa: BLE001
        raise _explain(exc, s, "read") from None
    if info.type == pafs.FileType.NotFound:
        raise _not_found(fs, path, s)
    try:
        listing = _listing(fs, path, info)
    except Exception as exc:  # noqa: BLE001
        raise _explain(exc, s, "list") from None
    name = path.rstrip("/").rsplit("/", 1)[-1] or "root"
    base = Path(cache_root) / "fetch" / _cache_key(s, path)
    version = _hash(json.dumps([info.type == pafs.FileType.File, listing]))
    final = base / version / name
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GsvError(
            f"cannot create the download cache ({folded(exc)})",
            path=base,
            fix="make it writable or point GSV_RAY_CACHE at a writable folder",
        ) from None
    with _locked(base / ".lock"):
        if final.exists():
            return final
        for stale in base.glob(".*"):  # left by a crashed fetch (we hold the lock, so nobody owns them)
            if stale.name != ".lock":
                shutil.rmtree(stale, ignore_errors=True)
        try:
            _download(fs, path, info, listing, base / version, name)
        except Exception as exc:  # noqa: BLE001
            raise _explain(exc, s, "download") from None
        for old in base.iterdir():  # older versions of this URI: superseded, free the disk
            if old.is_dir() and old.name != version and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
    return final


def _download(
    fs: pafs.FileSystem, path: str, info: pafs.FileInfo, listing: list[tuple[str, int, int]], folder: Path, name: str
) -> None:
    """Copy the remote file or directory ``path`` to ``folder/name``, all or nothing (``folder``
    appears only complete); :class:`OSError` when a copied file's size is not the one ``listing``
    recorded."""
    with atomic_dir(folder, sweep_orphans=False) as tmp:
        dest = tmp / name
        if info.type == pafs.FileType.Directory:
            dest.mkdir()  # copy_files creates nothing for an empty remote folder
        pafs.copy_files(
            path,
            str(dest),
            source_filesystem=fs,
            destination_filesystem=pafs.LocalFileSystem(),
            use_threads=True,
        )
        for rel, size, _mtime in listing:
            got = (dest / rel if rel else dest).stat().st_size
            if got != size:
                raise OSError(f"short copy of {rel or name}: {got} of {size} bytes (it changed while copying?)")
