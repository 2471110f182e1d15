"""Semantic tokens for an experiment folder: upstream's ``3-get-semantic.py`` step, done properly.

Reads ``<data>/2-name2text.txt`` (the utterance list and its order) and ``<data>/4-cnhubert/<name>.pt``
(HuBERT features ``[1, 768, T50]``), runs ``ssl_proj`` + ``quantizer`` of ANY GPT-SoVITS SoVITS file
(rebuilt by :func:`gsv_ray.rebuild.rebuild_cached`, task ``semantic``) and writes
``<data>/6-name2semantic.tsv`` byte-for-byte in upstream's format::

    item_name\\tsemantic_audio
    <name>\\t<space-separated token ids>
    ...

Differences from upstream, on purpose: an utterance without features is counted and reported (upstream
skips it silently); a feature file that cannot be used is an error naming it (upstream crashes or writes
garbage); an existing TSV is never replaced without ``overwrite``; the file appears atomically.

With ``workers > 1`` the utterances are split into that many contiguous chunks, each extracted by a Ray
task; the extractor weights travel once through the object store as numpy arrays (zero-copy for every
task on a node). Tokens do not depend on the mode: every utterance is computed alone (batch 1, as
upstream), in fp32 unless ``half`` (CUDA only). ``gsv-ray prepare`` computes the same tokens in its own
pipeline (:class:`SemanticStage`, an actor stage on Ray Data, fp32).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gsv_ray.data.experiment import (
    HUBERT_DIR,
    NAME2TEXT,
    SEMANTIC_HEADER,
    SEMANTIC_TSV,
    name2text_fields,
    ssl_features_problem,
)
from gsv_ray.distributed.cluster import connect, shutdown_local_ray
from gsv_ray.errors import GsvError, first_line, missing_error
from gsv_ray.options import check, option
from gsv_ray.prepare.pipeline import ModelStage, StageConfig, failed_row

if TYPE_CHECKING:
    from gsv_ray.rebuild import Rebuilt

OUTPUT = SEMANTIC_TSV
HEADER = SEMANTIC_HEADER

__all__ = [
    "HEADER",
    "HUBERT_DIR",
    "NAME2TEXT",
    "OUTPUT",
    "SemanticOptions",
    "SemanticResult",
    "SemanticStage",
    "extract_semantic",
    "first_names",
    "read_names",
    "render_tsv",
    "semantic_weights",
]


@dataclass(frozen=True)
class SemanticOptions:
    """``gsv-ray semantic``'s options (flags and YAML keys): :func:`extract_semantic`'s arguments."""

    data: str = option(metavar="DIR", help="the experiment folder (logs/<exp>)")
    model: str = option(metavar="FILE", help="any SoVITS .pth (export, base or checkpoint)")
    base: str | None = option(None, metavar="G", help="same-version base generator (needed for a v3/v4 LoRA export)")
    workers: int = option(1, low=1, metavar="N", help="Ray tasks; 1 runs in-process")
    address: str | None = option(
        None, metavar="ADDR", help="Ray cluster to join with --workers > 1 (default: a local one)"
    )
    half: bool = option(False, help="fp16 (CUDA only; default fp32)")
    output: str | None = option(
        None,
        metavar="FILE",
        help="where to write the TSV (default: 6-name2semantic.tsv in --data, where GPT training reads it)",
    )
    overwrite: bool = option(False, help="replace an existing TSV")
    cache: str | None = option(
        None, metavar="DIR", help="rebuild cache root (default: $GSV_RAY_CACHE or ~/.cache/gsv-ray)"
    )

    def run(self) -> SemanticResult:
        check(self)
        return extract_semantic(
            self.data,
            self.model,
            base_g=self.base,
            workers=self.workers,
            half=self.half,
            overwrite=self.overwrite,
            address=self.address,
            cache_root=self.cache,
            output=self.output,
        )


@dataclass
class SemanticResult:
    """What :func:`extract_semantic` did."""

    path: Path  # the TSV written
    listed: int  # utterances named in 2-name2text.txt (distinct)
    written: int  # lines written (utterances with features)
    missing: list[str]  # listed names without 4-cnhubert/<name>.pt, in list order
    report: Any  # gsv_ray.rebuild.RebuildReport of the model used
    version: str | None
    workers: int  # Ray tasks used (1 = in-process)
    device: str
    half: bool
    seconds: float
    tokens: int = 0  # total tokens written
    ignored_lines: int = 0  # non-empty lines of 2-name2text.txt without exactly 4 tab fields
    duplicates: list[str] = field(default_factory=list)  # names listed more than once (first kept)

    def summary(self) -> str:
        s = f"{self.written} of {self.listed} utterances written ({self.tokens} tokens) to {self.path}"
        if self.missing:
            s += f"; {len(self.missing)} without features"
        return s


# ---------------------------------------------------------------- inputs
def read_names(data_dir: str | Path) -> tuple[list[str], int, list[str]]:
    """Utterance names of ``2-name2text.txt`` in file order: ``(names, ignored_lines, duplicates)``.

    As upstream's loaders: lines without exactly 4 tab-separated fields are ignored; the name is the
    first field (the wav basename including its extension). A repeated name is kept once (first place).
    """
    path = Path(data_dir) / NAME2TEXT
    if not path.is_file():
        raise GsvError(
            f"no {NAME2TEXT} in this folder",
            path=data_dir,
            fix="pass --data logs/<exp> of an experiment whose text step (1-get-text) has run",
        )
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM is not part of the first name (as the experiment reader)
    except UnicodeDecodeError as e:
        raise GsvError(f"not UTF-8 text (byte {e.start})", path=path, fix="re-run the text step (1-get-text)") from e
    except OSError as e:
        raise GsvError(f"cannot read ({e.strerror})", path=path, fix="check the file's permissions") from e
    names: list[str] = []
    seen: set[str] = set()
    duplicates: list[str] = []
    ignored = 0
    for lineno, line in enumerate(text.strip("\n").split("\n"), 1):
        fields = name2text_fields(line)
        if fields is None:
            ignored += bool(line.strip())
            continue
        name = fields[0]
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
            raise GsvError(
                f"line {lineno} names {name!r}, which is not a file name",
                path=path,
                fix="each line must start with the wav basename (e.g. a_001.wav); re-run the text step",
            )
        if name in seen:
            duplicates.append(name)
            continue
        seen.add(name)
        names.append(name)
    if not names:
        raise GsvError(
            "no utterance lines (name<TAB>phones<TAB>word2ph<TAB>text)",
            path=path,
            fix="re-run the text step (1-get-text) for this experiment",
        )
    return names, ignored, duplicates


def _load_features(path: Path) -> torch.Tensor:
    """``4-cnhubert/<name>.pt`` -> fp32 ``[1, 768, T50]``; anything else is a one-line error naming it."""
    fix = "delete it and re-run the HuBERT step (2-get-hubert-wav32k) for this utterance"
    try:
        t = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt zip, pickle with objects, empty file...
        raise GsvError(f"cannot read HuBERT features ({first_line(e)})", path=path, fix=fix) from e
    problem = ssl_features_problem(t)
    if problem is not None:
        raise GsvError(f"HuBERT features {problem[1]}", path=path, fix=fix)
    if t.shape[2] < 2:
        raise GsvError(
            f"only {t.shape[2]} feature frame(s): too short for a single 25 Hz token",
            path=path,
            fix="remove this utterance from the dataset (it is under 40 ms)",
        )
    return t.float()


# ---------------------------------------------------------------- extraction (one chunk)
def _build_extractor(weights: Mapping[str, Any], device: str, half: bool):
    from gsv_ray.models.sovits.semantic import SemanticExtractor

    state = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.from_numpy on read-only (shared) arrays: we only read them
        for k, v in weights.items():
            state[k] = torch.from_numpy(v) if isinstance(v, np.ndarray) else v
    with torch.random.fork_rng(devices=[]):  # its random init is overwritten: leave the caller's RNG alone
        ext = SemanticExtractor()
    ext.load_state_dict(state, strict=True)  # copies: the shared arrays are never written
    if not ext.is_initialised:
        raise GsvError(
            "the quantizer's codebook is not initialised (inited = 0): extraction would run k-means "
            "and invent a codebook",
            fix="use the SoVITS file the voice was trained with (or its base)",
        )
    ext = ext.eval().to(device)
    return ext.half() if half else ext


def _extract_chunk(
    weights: Mapping[str, Any], feature_paths: Sequence[str], device: str, half: bool, threads: int | None = None
) -> dict[str, Any]:
    """Token lines (space-separated ids) for each feature file, in order; errors come back as text.

    Runs in-process or as a Ray task; returning the error keeps it one line across process boundaries.
    """
    # fp32 means fp32 on a GPU too: cuDNN convolutions default to TF32 (10-bit mantissa) on Ampere+
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    threads_before = torch.get_num_threads()  # in-process, the caller's settings are put back
    try:
        if threads:
            torch.set_num_threads(threads)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        ext = _build_extractor(weights, device, half)
        dtype = torch.float16 if half else torch.float32
        lines = [_tokens(ext, Path(p), device, dtype) for p in feature_paths]
        return {"lines": lines, "error": None}
    except GsvError as e:
        return {"lines": None, "error": str(e)}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.set_num_threads(threads_before)


def _tokens(ext: Any, path: Path, device: str, dtype: torch.dtype) -> str:
    """One utterance's tokens (a TSV line's second field), computed alone (batch 1, as upstream)."""
    with torch.inference_mode():
        ssl = _load_features(path).to(device=device, dtype=dtype)
        codes = ext.extract_latent(ssl)  # [1, n_q=1, T25]
    return " ".join(map(str, codes[0, 0, :].tolist()))


class SemanticStage(ModelStage):
    """``gsv-ray prepare``'s last model stage: each row still without a problem gets ``semantic`` (its
    tokens) from its written ``4-cnhubert`` file with ``cfg.sovits``'s quantizer, as
    :func:`extract_semantic` computes them (fp32, TF32 off); a file under 2 frames is the row's problem."""

    def __init__(self, cfg: StageConfig) -> None:
        super().__init__(cfg)
        _, weights = semantic_weights(cfg.sovits, None, None)  # type: ignore[arg-type]
        self.extractor = _build_extractor(weights, self.device, False)

    def one(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["problem"]:
            return row
        tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        try:
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
            tokens = _tokens(self.extractor, self.cfg.layout.cnhubert(row["name"]), self.device, torch.float32)
        except GsvError as e:  # the HuBERT stage wrote and checked the file: only too few frames is left
            return failed_row(row, "too_short", f"line {row['lineno']} ({row['name']}): {first_line(e)}")
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
        return {**row, "semantic": tokens}


# ---------------------------------------------------------------- Ray
def _chunks(n: int, k: int) -> list[tuple[int, int]]:
    """``k`` contiguous, near-equal ``[start, stop)`` ranges over ``n`` items (fewer when ``n < k``)."""
    k = max(1, min(k, n))
    base, extra = divmod(n, k)
    out, start = [], 0
    for i in range(k):
        stop = start + base + (i < extra)
        out.append((start, stop))
        start = stop
    return out


def _extract_ray(
    weights: Mapping[str, torch.Tensor], paths: list[str], workers: int, device: str, half: bool, address: str | None
) -> list[str]:
    import logging

    try:
        import ray
    except ImportError as e:  # pragma: no cover - ray is a dependency
        raise GsvError(
            "--workers > 1 needs Ray, which is not installed", fix="pip install 'ray>=2.60' or use --workers 1"
        ) from e
    started = connect(
        address, num_cpus=workers, logging_level=logging.ERROR, log_to_driver=False, object_store_memory=256 * 2**20
    )
    try:
        num_gpus = 0.0
        if device.startswith("cuda"):
            total = float(ray.cluster_resources().get("GPU", 0))
            if total <= 0:
                raise GsvError(
                    "the Ray cluster has no GPU for a CUDA extraction",
                    path=address,
                    fix="drop --half / use a cluster with GPUs, or use --workers 1",
                )
            num_gpus = min(1.0, total / workers)
            device = "cuda"
        weights_ref = ray.put({k: v.detach().cpu().numpy() for k, v in weights.items()})  # once, zero-copy reads
        task = ray.remote(num_cpus=1, num_gpus=num_gpus, max_retries=1)(_extract_chunk)
        spans = _chunks(len(paths), workers)
        refs = [task.remote(weights_ref, paths[a:b], device, half, 1) for a, b in spans]
        lines: list[str] = []
        for r in ray.get(refs):
            if r["error"]:
                raise GsvError(r["error"])
            lines.extend(r["lines"])
        return lines
    finally:
        if started:
            shutdown_local_ray()


# ---------------------------------------------------------------- output
def render_tsv(rows: Sequence[tuple[str, str]]) -> bytes:
    """Upstream's ``6-name2semantic.tsv``: header, ``name<TAB>ids`` lines, final newline, UTF-8."""
    return ("\n".join([HEADER, *(f"{name}\t{ids}" for name, ids in rows)]) + "\n").encode("utf-8")


def _resolve_device(device: str | None, half: bool) -> str:
    if device is None:
        device = "cuda" if half or torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GsvError(
            "--half needs a CUDA GPU and this machine has none"
            if half
            else f"device {device!r} asked for, but CUDA is not available",
            fix="drop --half: fp32 on CPU is the default" if half else "use device cpu",
        )
    if half and not device.startswith("cuda"):
        raise GsvError(f"--half needs a CUDA GPU, not {device!r}", fix="drop --half: fp32 is the default on CPU")
    return device


# ---------------------------------------------------------------- the step
def _check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output path that is a folder, or a file without ``overwrite``: before any work
    (atomic_write would refuse it too, after the extraction)."""
    if out.is_dir():
        raise GsvError(
            "is a directory, but the TSV is written here",
            path=out,
            fix="remove or rename that directory, or pass --output FILE to write the TSV elsewhere",
        )
    if out.exists() and not overwrite:
        raise GsvError(
            "already exists; not overwriting",
            path=out,
            fix="pass --overwrite to replace it, or --output FILE to write the TSV elsewhere",
        )


def _with_features(names: list[str], feats: Path) -> tuple[list[str], list[str]]:
    """(the utterances that have a features file, those that do not); none at all is refused."""
    present = [n for n in names if (feats / f"{n}.pt").is_file()]
    missing = [n for n in names if not (feats / f"{n}.pt").is_file()] if len(present) < len(names) else []
    if not present:
        raise GsvError(
            f"none of the {len(names)} utterances of {NAME2TEXT} has features (first expected: {names[0]}.pt)",
            path=feats,
            fix="run the HuBERT step (2-get-hubert-wav32k) first",
        )
    return present, missing


def _extract(
    weights: Mapping[str, torch.Tensor], paths: list[str], workers: int, device: str, half: bool, address: str | None
) -> list[str]:
    """Each features file's semantic tokens (a TSV line's second field): in this process, or over
    ``workers`` Ray tasks."""
    if workers > 1:
        return _extract_ray(weights, paths, workers, device, half, address)
    r = _extract_chunk(weights, paths, device, half)
    if r["error"]:
        raise GsvError(r["error"])
    return r["lines"]


def extract_semantic(
    data_dir: str | Path,
    model: str | Path,
    *,
    base_g: str | Path | None = None,
    workers: int = 1,
    half: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    address: str | None = None,
    cache_root: str | Path | None = None,
    output: str | Path | None = None,
) -> SemanticResult:
    """Write ``<data_dir>/6-name2semantic.tsv`` from ``4-cnhubert`` features with ``model``'s quantizer.

    ``model`` is any GPT-SoVITS SoVITS file (export, base, checkpoint; a v3/v4 LoRA export needs its
    ``base_g``). ``workers > 1`` spreads the work over Ray tasks (``address``: an existing cluster;
    default: a private local instance, or the one already initialised in this process). ``half``
    (fp16) needs CUDA. Raises :class:`GsvError` for every bad input, before writing anything.
    """
    t0 = time.perf_counter()
    data = _experiment_dir(data_dir)
    if workers < 1:
        raise GsvError(f"--workers must be at least 1, not {workers}", fix="use --workers 1 for in-process")
    device = _resolve_device(device, half)
    out = Path(output) if output is not None else data / OUTPUT
    _check_output(out, overwrite)
    names, ignored, duplicates = read_names(data)
    feats = _features_dir(data)
    rebuilt, weights = semantic_weights(model, base_g, cache_root)
    present, missing = _with_features(names, feats)
    paths = [str(feats / f"{n}.pt") for n in present]
    used = min(workers, len(paths))
    lines = _extract(weights, paths, used, device, half, address)
    assert len(lines) == len(present)

    data_bytes = render_tsv(list(zip(present, lines)))
    from gsv_ray.atomic import atomic_write

    protect = [data / NAME2TEXT, model] + ([base_g] if base_g is not None else [])
    atomic_write(out, lambda f: f.write(data_bytes), overwrite=overwrite, protect=protect)
    return SemanticResult(
        path=out,
        listed=len(names),
        written=len(present),
        missing=missing,
        report=rebuilt.report,
        version=rebuilt.version,
        workers=used,
        device=device,
        half=half,
        seconds=time.perf_counter() - t0,
        tokens=sum(len(s.split()) for s in lines),
        ignored_lines=ignored,
        duplicates=duplicates,
    )


def _experiment_dir(data_dir: str | Path) -> Path:
    """``data_dir``, a folder; :class:`GsvError` when it is missing or not a folder."""
    data = Path(data_dir)
    if not data.is_dir():
        fix = "pass --data logs/<exp>, the experiment folder holding 2-name2text.txt and 4-cnhubert/"
        raise (
            missing_error(data, "not found", fix) if not data.exists() else GsvError("not a folder", path=data, fix=fix)
        )
    return data


def _features_dir(data: Path) -> Path:
    """The experiment's folder of HuBERT features; :class:`GsvError` when the HuBERT step has not run."""
    feats = data / HUBERT_DIR
    if not feats.is_dir():
        raise GsvError(
            f"no {HUBERT_DIR}/ folder of HuBERT features",
            path=data,
            fix="run the HuBERT step (2-get-hubert-wav32k) for this experiment first",
        )
    return feats


def semantic_weights(
    model: str | Path, base_g: str | Path | None, cache_root: str | Path | None
) -> tuple[Rebuilt, dict[str, torch.Tensor]]:
    """``model`` rebuilt for the semantic task (cached) and its generator weights; :class:`GsvError`
    when it has none."""
    from gsv_ray.rebuild import RebuildSpec, rebuild_cached

    rebuilt = rebuild_cached(RebuildSpec(init=str(model), base_g=base_g, task="semantic"), cache_root=cache_root)
    weights = rebuilt.weights.get("generator")
    if not weights:
        raise GsvError("has no SoVITS generator weights", path=model, fix="pass a SoVITS .pth file as --model")
    return rebuilt, weights


def first_names(names: Sequence[str], n: int = 5) -> str:
    """``a, b, c (+7 more)``: the first few of a list, for one-line reports."""
    head = ", ".join(names[:n])
    return head + (f" (+{len(names) - n} more)" if len(names) > n else "")
