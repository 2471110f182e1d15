"""The listening table of a search: each held-out utterance, real and as every trial speaks it.

A person picks a voice by listening; this puts the search's candidates side by side, twice:

* :func:`write_listening_page` -- ``<out>/listen.html`` and its audio beside it
  (``<out>/listen/<utterance>/real.wav`` and ``<trial>.wav``, 16-bit PCM): one row per held-out
  utterance with its text, the real recording, and each trial's audio at its best step with that
  step's metrics (the search's metric first, the best trial marked). The page is self-contained:
  inline CSS and a small inline script, no network (its Content-Security-Policy allows only its own
  folder, so a browser loads nothing else). The script marks a clip the browser cannot play.
* :func:`wandb_listening_table` -- the same rows as a ``wandb.Table`` (utterance, text, real audio,
  then an audio and a metrics column per trial) for the search's W&B summary run.

Names and texts come from the user's data: everything is HTML-escaped, and file names are made
safe (letters, digits, ``._-``; unique per folder), so no utterance name or text can add markup or
write outside ``<out>/listen/``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import os
import re
import shutil
import wave
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from gsv_ray.atomic import atomic_write, commit_dir
from gsv_ray.audio import read_wav_pcm16, to_pcm16, write_wav
from gsv_ray.errors import GsvError
from gsv_ray.owned import owned_temp_dir, sweep
from gsv_ray.track.wandb_run import safe_name
from gsv_ray.tune.results import BEST_MARK

__all__ = [
    "AUDIO_DIR",
    "LISTEN_KEY",
    "PAGE_NAME",
    "Clip",
    "ListeningPage",
    "ListeningRow",
    "TrialTake",
    "best_trial",
    "search_rows",
    "wandb_listening_table",
    "write_listening_page",
]

PAGE_NAME = "listen.html"
AUDIO_DIR = "listen"
REAL = "real"
#: File names stay well under every filesystem's 255-byte limit.
_NAME_MAX = 80


# -- data ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Clip:
    """Audio: a WAV file (``path``), or a mono waveform ``[T]`` (numpy or torch, float in [-1, 1]
    or int16) with its ``sample_rate``."""

    path: Path | None = None
    waveform: Any = None
    sample_rate: int | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.waveform is None):
            raise ValueError("a Clip is a path or a waveform, exactly one")
        if self.waveform is not None and not self.sample_rate:
            raise ValueError("a waveform Clip needs its sample_rate")

    @classmethod
    def of(cls, audio: Clip | str | os.PathLike[str] | tuple[Any, int]) -> Clip:
        """A Clip from a Clip, a WAV path, or ``(waveform, sample_rate)``."""
        if isinstance(audio, Clip):
            return audio
        if isinstance(audio, (str, os.PathLike)):
            return cls(path=Path(audio))
        waveform, sr = audio
        return cls(waveform=waveform, sample_rate=int(sr))

    def pcm16(self) -> tuple[np.ndarray, int]:
        """The audio as mono int16 samples and its rate (a file's channels are averaged)."""
        if self.path is None:
            return to_pcm16(self.waveform), int(self.sample_rate or 0)
        try:
            with wave.open(str(self.path), "rb") as w:
                rate = w.getframerate()
            data = read_wav_pcm16(self.path)
        except FileNotFoundError as e:
            raise GsvError("no such audio file", path=self.path, fix="check the path") from e
        except (wave.Error, EOFError) as e:
            raise GsvError(
                f"not a readable WAV file ({e})",
                path=self.path,
                fix="give a 16-bit PCM WAV (what GPT-SoVITS's preprocessing writes)",
            ) from e
        return to_pcm16(data.mean(dim=0)), rate


@dataclass(frozen=True)
class TrialTake:
    """One trial's audio for one utterance at the trial's best ``step``, with its metrics there
    (``None`` or NaN: not measured)."""

    clip: Clip
    step: int
    metrics: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class ListeningRow:
    """One held-out utterance: its name, its text, the real recording and each trial's take (by
    trial name, in display order; a trial may lack a take, e.g. one that failed)."""

    utterance: str
    text: str
    real: Clip
    trials: Mapping[str, TrialTake]


@dataclass(frozen=True)
class ListeningPage:
    """What :func:`write_listening_page` wrote: the page, and the rows with every clip now the
    file beside it (pass these to :func:`wandb_listening_table`)."""

    html: Path
    rows: tuple[ListeningRow, ...]
    best: str | None


# -- names ---------------------------------------------------------------------------------------
def _unique_names(names: Iterable[str], reserved: Iterable[str] = ()) -> list[str]:
    """A file-safe name for each of ``names``, in order: distinct from each other (a repeated name
    gets ``-2``, ...) and from ``reserved``, also without regard to case (macOS, Windows disks)."""
    taken = {r.lower() for r in reserved}
    out = []
    for name in names:
        base = re.sub(r"\.{2,}", ".", safe_name(name))[:_NAME_MAX].rstrip("-.") or "unnamed"
        candidate, n = base, 1
        while candidate.lower() in taken:
            n += 1
            candidate = f"{base}-{n}"
        taken.add(candidate.lower())
        out.append(candidate)
    return out


def _trial_names(rows: Sequence[ListeningRow]) -> list[str]:
    """Every trial that has a take in some row, in first-seen order."""
    return list(dict.fromkeys(t for row in rows for t in row.trials))


# -- metrics -------------------------------------------------------------------------------------
def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _ordered_metrics(metrics: Mapping[str, Any], metric: str | None) -> list[tuple[str, float | None]]:
    """``(name, value)`` with the search's ``metric`` first (None when the take lacks it), then the
    rest in their given order."""
    first = [(metric, _finite(metrics.get(metric)))] if metric else []
    return first + [(k, _finite(v)) for k, v in metrics.items() if k != metric]


def best_trial(rows: Sequence[ListeningRow], metric: str, mode: str) -> str | None:
    """The trial whose mean ``metric`` over the rows is lowest (``mode="min"``) or highest
    (``"max"``); rows where it is missing are left out; None when no trial has it."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
    means: dict[str, float] = {}
    for name in _trial_names(rows):
        vals = [
            v
            for row in rows
            if name in row.trials
            for v in [_finite(row.trials[name].metrics.get(metric))]
            if v is not None
        ]
        if vals:
            means[name] = sum(vals) / len(vals)
    if not means:
        return None
    pick = min if mode == "min" else max
    return pick(means, key=lambda n: means[n])  # ties: the first in display order


# -- the page ------------------------------------------------------------------------------------
def _write_audio(
    tmp: Path, final: Path, rows: Sequence[ListeningRow], trials: Sequence[str]
) -> tuple[ListeningRow, ...]:
    """Write every clip under ``tmp`` (``<utterance>/real.wav``, ``<utterance>/<trial>.wav``); the
    rows with their clips pointing where those files will be once ``tmp`` is renamed to ``final``."""
    trial_files = dict(zip(trials, _unique_names(trials, reserved=[REAL])))
    out = []
    for row, folder in zip(rows, _unique_names(r.utterance for r in rows)):
        pcm, sr = row.real.pcm16()
        write_wav(tmp / folder / f"{REAL}.wav", pcm, sr)
        takes = {}
        for name, take in row.trials.items():
            pcm, sr = take.clip.pcm16()
            write_wav(tmp / folder / f"{trial_files[name]}.wav", pcm, sr)
            takes[name] = replace(take, clip=Clip(path=final / folder / f"{trial_files[name]}.wav"))
        out.append(replace(row, real=Clip(path=final / folder / f"{REAL}.wav"), trials=takes))
    return tuple(out)


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:.4em .6em;vertical-align:top;text-align:left}
th.best,td.best{background:#fff6d5}
.text{max-width:22em;color:#444}
.metrics{font-size:.85em;margin:.3em 0 0;padding:0;list-style:none}
.metrics .main{font-weight:bold}
.error{color:#b00020;font-size:.85em}
audio{width:14em}
"""

#: Marks each clip the browser loaded (``data-state="ok"``, ``data-duration``) or could not play
#: (``data-state="error"`` and a visible note): a reader sees a broken file at once, and the tests
#: read the same marks back from a real browser.
_SCRIPT = """
for (const a of document.querySelectorAll('audio')) {
  const s = a.querySelector('source');
  const mark = (state) => {
    a.dataset.state = state; a.dataset.ready = a.readyState; a.dataset.duration = a.duration;
    a.dataset.canPlay = a.canPlayType(s.type);
    if (state === 'error' && !a.nextElementSibling?.classList.contains('error')) {
      const note = document.createElement('div'); note.className = 'error';
      note.textContent = 'cannot play ' + s.getAttribute('src'); a.after(note);
    }
  };
  a.addEventListener('loadedmetadata', () => mark('ok'));
  s.addEventListener('error', () => mark('error'));
  if (a.readyState >= 1) mark('ok');
}
"""


def _csp() -> str:
    """Only the page's own folder (audio) and its own inline style and script: nothing from the
    network, and no markup that escaped escaping could run a script of its own."""

    def digest(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    return f"default-src 'none'; media-src 'self'; style-src {digest(_CSS)}; script-src {digest(_SCRIPT)}"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _audio(clip: Clip, base: Path) -> str:
    assert clip.path is not None
    src = _esc(quote(clip.path.relative_to(base).as_posix()))
    return f'<audio controls preload="metadata"><source src="{src}" type="audio/wav"></audio>'


def _take_cell(take: TrialTake | None, base: Path, metric: str | None, best: bool) -> str:
    cls = ' class="best"' if best else ""
    if take is None:
        return f"<td{cls}>no audio</td>"
    items = [
        f'<li class="main">{_esc(k)}: {_fmt(v)}</li>' if k == metric else f"<li>{_esc(k)}: {_fmt(v)}</li>"
        for k, v in _ordered_metrics(take.metrics, metric)
    ]
    items.append(f"<li>step {int(take.step)}</li>")
    return f'<td{cls}>{_audio(take.clip, base)}<ul class="metrics">{"".join(items)}</ul></td>'


def _page_html(
    rows: Sequence[ListeningRow],
    trials: Sequence[str],
    base: Path,
    *,
    title: str,
    metric: str,
    mode: str,
    best: str | None,
) -> str:
    """The page; its audio sources relative to ``base``, the page's folder."""
    head = "".join(
        f'<th class="best">{_esc(t)} {BEST_MARK} best</th>' if t == best else f"<th>{_esc(t)}</th>" for t in trials
    )
    body = []
    for row in rows:
        cells = "".join(_take_cell(row.trials.get(t), base, metric, t == best) for t in trials)
        body.append(
            f'<tr><td><b>{_esc(row.utterance)}</b><div class="text">{_esc(row.text)}</div></td>'
            f"<td>{_audio(row.real, base)}</td>{cells}</tr>"
        )
    goal = "lower" if mode == "min" else "higher"
    count = f"{len(rows)} held-out utterance{'' if len(rows) == 1 else 's'}"
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_esc(_csp())}">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p>{count}; each trial at its best step. "
        f"Ranked by <b>{_esc(metric)}</b> ({goal} is better); {BEST_MARK}: the best trial.</p>"
        f"<table><thead><tr><th>utterance</th><th>real</th>{head}</tr></thead><tbody>{''.join(body)}"
        f"</tbody></table><script>{_SCRIPT}</script></body></html>\n"
    )


def write_listening_page(
    out_dir: str | Path, rows: Sequence[ListeningRow], *, title: str, metric: str, mode: str, best: str | None = None
) -> ListeningPage:
    """Write ``<out_dir>/listen.html`` and its audio (``<out_dir>/listen/``, replaced as a whole,
    atomically; the page last, so it never points at audio not yet there).

    ``metric``/``mode`` (``min``/``max``): the search's objective, shown first in each cell; ``best``:
    the trial to mark, by default :func:`best_trial` of the rows. Every clip is written as 16-bit
    mono PCM WAV at its own rate. A clip file that is not a readable WAV raises
    :class:`~gsv_ray.errors.GsvError` naming it; nothing under ``out_dir`` changes then."""
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
    out_dir = Path(out_dir)
    trials = _trial_names(rows)
    if best is None:
        best = best_trial(rows, metric, mode)
    final = out_dir / AUDIO_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    sweep(out_dir, lambda n: n.startswith(f".{AUDIO_DIR}."))  # what a killed writer left
    tmp, owner = owned_temp_dir(final)
    try:
        written = _write_audio(tmp, final, rows, trials)
        owner.disown()
        commit_dir(tmp, final, replace=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        owner.release()
    text = _page_html(written, trials, out_dir, title=title, metric=metric, mode=mode, best=best)
    page = atomic_write(out_dir / PAGE_NAME, lambda f: f.write(text.encode("utf-8")), overwrite=True)
    return ListeningPage(html=page, rows=written, best=best)


# -- W&B -----------------------------------------------------------------------------------------
def _table_columns(trials: Sequence[str]) -> list[str]:
    cols = ["utterance", "text", REAL] + [c for t in trials for c in (t, f"{t} metrics")]
    if len(set(cols)) != len(cols):
        raise ValueError(f"trial names clash with the table's columns: {trials}")
    return cols


def wandb_listening_table(rows: Sequence[ListeningRow], *, metric: str | None = None, best: str | None = None) -> Any:
    """The rows as a ``wandb.Table``: ``utterance``, ``text``, ``real`` (audio), then per trial
    ``<trial>`` (audio at its best step) and ``<trial> metrics`` (``{"step", every metric;
    "best": true for the best trial}``; non-finite values as null). The ``best`` trial's
    columns come first. Clips must be files (``ListeningPage.rows``): ``wandb.Audio`` takes a
    waveform only with the soundfile package, which we do not require. Logged in a run, W&B stores
    the table and its audio as that run's ``run_table`` artifact."""
    import wandb

    trials = _trial_names(rows)
    if best in trials:
        trials.remove(best)
        trials.insert(0, best)

    def audio(clip: Clip, caption: str) -> Any:
        if clip.path is None:
            raise ValueError("wandb_listening_table needs clips on disk: pass write_listening_page(...).rows")
        return wandb.Audio(str(clip.path), caption=caption)

    data = []
    for row in rows:
        line: list[Any] = [row.utterance, row.text, audio(row.real, f"{row.utterance} ({REAL})")]
        for t in trials:
            take = row.trials.get(t)
            if take is None:
                line += [None, None]
                continue
            info: dict[str, Any] = {"step": int(take.step), **dict(_ordered_metrics(take.metrics, metric))}
            if t == best:
                info["best"] = True
            line += [audio(take.clip, f"{row.utterance}: {t} step {int(take.step)}"), info]
        data.append(line)
    # Mixed types: a metric may be null in one row and a number in the next, which W&B's inferred
    # column types refuse; every audio cell still carries its own audio-file type.
    return wandb.Table(columns=_table_columns(trials), data=data, allow_mixed_types=True)


# -- a search's rows -----------------------------------------------------------------------------
#: Where the search summary run logs the table.
LISTEN_KEY = "tune/listen"


def search_rows(outcome: Any, out: Path, data: str | None) -> list[ListeningRow]:
    """A finished search's rows, trials best first: each trial renders its first ``--audio-samples``
    held-out utterances at every validation (``-o/trials/<id>/samples/step_<N>/<name>.wav``; the same
    utterances for every trial), taken at the trial's best step with its metric there; the real
    recording and text come from a local data folder. Rows whose real recording is not at hand (a
    data URI) are left out; no rows when no trial rendered audio (v3/v4 render mel images)."""
    from gsv_ray.tune.results import ranked_trials

    takes: dict[str, dict[str, TrialTake]] = {}
    for t in ranked_trials(outcome):
        if t.best_step is None:
            continue
        folder = Path(out) / "trials" / t.trial_id / "samples" / f"step_{t.best_step:08d}"
        takes[t.trial_id] = {
            p.stem: TrialTake(Clip(path=p), t.best_step, {outcome.metric: t.best_value})
            for p in sorted(folder.glob("*.wav"))
        }
    texts, wavs = _utterances(data)
    by_file = {k: name for name in texts for k in (safe_name(name), safe_name(Path(name).stem))}
    rows = []
    for stem in dict.fromkeys(n for per in takes.values() for n in per):
        name = by_file.get(stem)
        if name is None or name not in wavs:
            continue
        rows.append(
            ListeningRow(
                utterance=name,
                text=texts.get(name, ""),
                real=Clip(path=wavs[name]),
                trials={tid: per[stem] for tid, per in takes.items() if stem in per},
            )
        )
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
