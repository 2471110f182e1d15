"""The listening table: a row per held-out utterance, its text, the real audio and each trial's audio
at its best step, so a person can listen across trials side by side.

Each trial renders its first ``--audio-samples`` held-out utterances at every validation
(``trials/<id>/samples/step_<N>/<name>.wav``, the same utterances for every trial: the held-out set
is chosen by name). The table takes each trial's files at its best step, the real recordings from the
data folder (hard-linked into ``-o/listen/real/``, so the page needs nothing outside ``-o``), and is
written as ``-o/listen.html`` (no network needed, relative paths) and logged in the search's W&B
summary run as one ``wandb.Table`` with ``wandb.Audio`` cells (:data:`LISTEN_KEY`).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

from gsv_ray.atomic import atomic_write
from gsv_ray.tune.results import BEST_MARK, TuneOutcome, ranked_trials

LISTEN_HTML, LISTEN_DIR, LISTEN_KEY = "listen.html", "listen", "tune/listen"


@dataclass(frozen=True)
class ListenRow:
    """One held-out utterance: its name and text, and paths relative to ``-o``: the real recording
    (None when the data folder is not local) and each trial's rendering at its best step."""

    name: str
    text: str | None
    real: str | None
    trials: dict[str, str] = field(default_factory=dict)


def listening_rows(outcome: TuneOutcome, out: Path, data: str | None) -> list[ListenRow]:
    """The rows, trials in the table's order (best first); empty when no trial rendered audio."""
    from gsv_ray.track.wandb_run import safe_name

    per_trial: dict[str, dict[str, Path]] = {}
    for t in ranked_trials(outcome):
        if t.best_step is None:
            continue
        folder = out / "trials" / t.trial_id / "samples" / f"step_{t.best_step:08d}"
        per_trial[t.trial_id] = {p.stem: p for p in sorted(folder.glob("*.wav"))}
    names = list(dict.fromkeys(n for files in per_trial.values() for n in files))
    texts, wavs = _utterances(data)
    by_file = {k: name for name in texts for k in (safe_name(name), safe_name(Path(name).stem))}
    rows = []
    for n in names:
        utt = by_file.get(n)
        real = wavs.get(utt) if utt else None
        if real is not None:  # a copy, never a link to the user's recording (a player could write into it)
            data_bytes = real.read_bytes()
            real = atomic_write(out / LISTEN_DIR / "real" / f"{n}.wav", lambda f: f.write(data_bytes), overwrite=True)
        rows.append(ListenRow(name=utt or n, text=texts.get(utt) if utt else None,
                              real=str(real.relative_to(out)) if real is not None else None,
                              trials={tid: str(files[n].relative_to(out)) for tid, files in per_trial.items()
                                      if n in files}))
    return rows


def _utterances(data: str | None) -> tuple[dict[str, str], dict[str, Path]]:
    """(name -> text, name -> real WAV) of a local experiment folder (empty for a URI or another layout)."""
    from gsv_ray.data.experiment import NAME2TEXT, WAV_DIR, name2text_fields

    root = Path(data) if data and "://" not in data else None
    if root is None or not (root / NAME2TEXT).is_file():
        return {}, {}
    texts: dict[str, str] = {}
    for line in (root / NAME2TEXT).read_text(encoding="utf-8", errors="replace").splitlines():
        fields = name2text_fields(line)
        if fields is not None:
            texts[fields[0]] = fields[3]
    return texts, {n: root / WAV_DIR / n for n in texts if (root / WAV_DIR / n).is_file()}


def write_listen_html(outcome: TuneOutcome, rows: list[ListenRow], out: Path) -> Path | None:
    """``-o/listen.html`` (atomically; None and nothing written without rows)."""
    if not rows:
        return None
    trials = {t.trial_id: t for t in outcome.trials}
    order = list(dict.fromkeys(tid for r in rows for tid in r.trials))
    best = outcome.best.trial_id if outcome.best is not None else None

    def audio(src: str | None) -> str:
        return f'<audio controls preload="none" src="{html.escape(src)}"></audio>' if src else "—"

    head = "".join(f"<th>{BEST_MARK + ' ' if tid == best else ''}{html.escape(tid)}<br><small>lr_scale "
                   f"{trials[tid].lr_scale:.3g}, warmup {trials[tid].warmup_steps}<br>{html.escape(outcome.metric)} "
                   f"{trials[tid].best_value:.4g} at step {trials[tid].best_step}</small></th>" for tid in order)
    body = "".join(f"<tr><td>{html.escape(r.name)}</td><td>{html.escape(r.text or '')}</td><td>{audio(r.real)}</td>"
                   + "".join(f"<td>{audio(r.trials.get(tid))}</td>" for tid in order) + "</tr>\n" for r in rows)
    page = (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(outcome.name)}: listen</title>'
            "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
            "table{border-collapse:collapse}</style></head><body>\n"
            f"<h1>{html.escape(outcome.name)}: held-out utterances, each trial at its best step</h1>\n"
            f"<table><tr><th>utterance</th><th>text</th><th>real</th>{head}</tr>\n{body}</table></body></html>\n")
    return atomic_write(out / LISTEN_HTML, lambda f: f.write(page.encode("utf-8")), overwrite=True)


def listen_table(rows: list[ListenRow], out: Path):
    """The rows as one ``wandb.Table``: utterance, text, real audio, one audio column per trial."""
    import wandb

    order = list(dict.fromkeys(tid for r in rows for tid in r.trials))

    def audio(rel: str | None, caption: str):
        return wandb.Audio(str(out / rel), caption=caption) if rel else None

    data = [[r.name, r.text, audio(r.real, f"{r.name} (real)"),
             *[audio(r.trials.get(tid), f"{r.name} ({tid})") for tid in order]] for r in rows]
    return wandb.Table(columns=["utterance", "text", "real", *order], data=data, allow_mixed_types=True)
