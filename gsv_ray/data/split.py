"""Which utterances train and which validate (:func:`split_names`, salted-hash or a names file), and
upstream's repetition of a small set within an epoch (:func:`upstream_repeats`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from gsv_ray.data.scan import Experiment, ExperimentOptions, open_experiment
from gsv_ray.errors import GsvError, missing_error


# ----------------------------------------------------------------------------- validation split
@dataclass(frozen=True)
class SplitOptions:
    """How to hold out validation utterances.

    ``val_names_file``: one utterance name per line (wins over ``val_fraction``). Otherwise
    ``val_fraction`` of the names (rounded, at least one when > 0, never all) is chosen by a
    salted hash of each name: the choice does not depend on folder order, and adding utterances
    later keeps every earlier choice unless the count changes.
    """

    val_fraction: float = 0.0
    val_names_file: str | Path | None = None
    seed: int = 1234


def _hash_key(seed: int, name: str) -> str:
    return hashlib.sha1(f"{seed}\0{name}".encode("utf-8")).hexdigest()


def split_names(
    names: Sequence[str], split: SplitOptions, *, known: Iterable[str] | None = None
) -> tuple[list[str], list[str]]:
    """``(train, val)`` name lists, each in the order of ``names``.

    With a names file, a listed name that is not in ``known`` (default: ``names``) raises
    :class:`GsvError` (a typo would otherwise silently give an empty validation set); listed names
    that are known but not usable (left out by the report) are simply absent.
    """
    unique = list(dict.fromkeys(names))
    if split.val_names_file is not None:
        path = Path(split.val_names_file)
        if not path.is_file():
            raise missing_error(path, "validation names file not found", "pass a text file with one name per line")
        try:
            listed = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
        except UnicodeDecodeError as e:
            raise GsvError(f"not UTF-8 text (byte {e.start})", path=path, fix="re-save it as UTF-8") from None
        pool = set(known) if known is not None else set(unique)
        unknown = [n for n in listed if n not in pool]
        if unknown:
            raise GsvError(
                f"{len(unknown)} validation names are not utterances of this experiment (first: {unknown[0]!r})",
                path=path,
                fix="use names as in 2-name2text.txt, e.g. 'a_001.wav'",
            )
        val_set = set(listed)
    else:
        if not 0.0 <= split.val_fraction < 1.0:
            raise GsvError(f"val_fraction must be in [0, 1), got {split.val_fraction}")
        n_val = 0
        if split.val_fraction > 0 and len(unique) > 1:
            n_val = min(len(unique) - 1, max(1, round(split.val_fraction * len(unique))))
        ranked = sorted(unique, key=lambda n: _hash_key(split.seed, n))
        val_set = set(ranked[:n_val])
    train = [n for n in unique if n not in val_set]
    val = [n for n in unique if n in val_set]
    return train, val


#: Upstream's smallest epoch: both loaders repeat a smaller utterance list (see :func:`upstream_repeats`).
UPSTREAM_MIN_ITEMS = 100


def upstream_repeats(n: int, min_items: int = UPSTREAM_MIN_ITEMS) -> int:
    """Copies of each of ``n`` utterances in one epoch, as GPT-SoVITS's loaders repeat a small set
    (``module/data_utils.py``, ``AR/data/dataset.py``): ``max(2, int(min_items / n))`` when
    ``0 < n < min_items``, else 1. E.g. 20 -> 5, 34 -> 2, 99 -> 2, 100 -> 1."""
    if n <= 0 or n >= min_items:
        return 1
    return max(2, int(min_items / n))


def copy_key(name: str, copy: int) -> str:
    """The draw key of copy ``copy`` of utterance ``name``: the name itself for copy 0 (so a set that
    is not repeated draws exactly as before), ``name#k`` for copy k."""
    return name if copy == 0 else f"{name}#{copy}"


def repeated(items: Sequence[Any], copies: int, name: Callable[[Any], str]) -> tuple[list[Any], list[str]]:
    """``(items, keys)`` of an epoch holding ``copies`` copies of ``items`` (upstream's order: the whole
    list, then again), each copy's draw key from :func:`copy_key`."""
    out = [it for _ in range(copies) for it in items]
    keys = [copy_key(name(it), k) for k in range(copies) for it in items]
    return out, keys


def repeat_to_minimum(items: list, min_items: int | None) -> list:
    """Upstream's small-dataset padding: fewer than ``min_items`` -> the list repeated
    :func:`upstream_repeats` times. ``None`` leaves the list alone."""
    return list(items) * (upstream_repeats(len(items), min_items) if min_items else 1)


def experiment_split(
    experiment: Experiment | str | Path,
    stage: str,
    version: str | None = None,
    *,
    split: SplitOptions | None = None,
    options: ExperimentOptions | None = None,
) -> tuple[Experiment, list[str], list[str]]:
    """Open (when given a path; ``version`` is then required) and split an experiment:
    ``(experiment, train_names, val_names)``. No usable utterance at all is a :class:`GsvError`."""
    if not isinstance(experiment, Experiment):
        if version is None:
            raise ValueError("version is required when opening an experiment folder")
        experiment = open_experiment(experiment, stage, version, options)
    if not experiment.utterances:
        raise GsvError(
            f"no usable utterances for {'SoVITS' if stage == 'sovits' else 'GPT'} training: "
            + "; ".join(experiment.report.lines()[1:]),
            path=experiment.root,
            fix="fix or re-run preprocessing for the listed problems",
        )
    train, val = split_names(experiment.names, split or SplitOptions(), known=experiment.known_names)
    return experiment, train, val


def split_datasets(
    dataset: Callable[..., Any],
    experiment: Experiment | str | Path,
    version: str | None = None,
    *,
    split: SplitOptions | None = None,
    options: ExperimentOptions | None = None,
    min_items: int | None = None,
    **kwargs: Any,
) -> tuple[Any, Any | None]:
    """``(train, val)`` datasets of the class ``dataset`` (``GPTDataset``, ``SoVITSDataset``: its
    ``stage`` says how to open the folder; opened here when given a path, ``version`` is then
    required). ``val`` is None without a validation split; ``kwargs`` go to both datasets."""
    experiment, train, val = experiment_split(
        experiment,
        dataset.stage,
        version,
        split=split,  # type: ignore[attr-defined]
        options=options,
    )
    return (
        dataset(experiment, train, min_items=min_items, **kwargs),
        dataset(experiment, val, **kwargs) if val else None,
    )
