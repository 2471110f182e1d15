"""The listening page and table (``gsv_ray.tune.listen``) on real audio: the files it writes, its
escaping of hostile names, the W&B table read back from a real offline run, and the page loaded in a
real headless browser (Debian's chromium) over a loopback HTTP server."""

from __future__ import annotations

import functools
import html.parser
import json
import math
import os
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from gsv_ray.audio import wav_info
from gsv_ray.errors import GsvError
from gsv_ray.track import wandb_file as wr
from gsv_ray.tune.listen import (
    Clip,
    ListeningRow,
    TrialTake,
    best_trial,
    wandb_listening_table,
    write_listening_page,
)
from tests.track.conftest import wandb_env  # noqa: F401  (the hermetic W&B fixture, used by name)

ARCTIC = ("goldens", "prepare_inputs", "arctic_a0007.wav")  # CMU ARCTIC, 16 kHz, 64000 frames (4 s)
SR = 16000
HOSTILE_UTT = '../../<script>document.title="pwned"</script>'
HOSTILE_TEXT = 'He said "hi" & <img src=x onerror="document.body.dataset.pwned=1"> left.'
HOSTILE_TRIAL = '"><b>trial</b>/../x'


def _tone(seconds: float, hz: float = 220.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * math.pi * hz * t)).astype(np.float32)


def _rows(arctic: Path) -> list[ListeningRow]:
    """Three utterances, three trials; trial ``t2`` has no take for the last one (it failed).
    Trial i speaks utterance u for 0.5 + 0.25 * (u + i) s; ``t1`` has the lowest mel_dist."""
    rows = []
    for u, (name, text) in enumerate(
        [("utt_a", "Author of the danger trail."), ("utt b", "Philip Steels, etc."), ("utt-b", "A third one.")]
    ):
        takes = {}
        for i, trial in enumerate(["t0", "t1", "t2"]):
            if trial == "t2" and u == 2:
                continue
            audio = _tone(0.5 + 0.25 * (u + i))
            clip = Clip.of((torch.from_numpy(audio), SR)) if i == 1 else Clip.of((audio, SR))
            takes[trial] = TrialTake(
                clip,
                step=100 * (i + 1),
                metrics={
                    "val_loss": 1.0 + i,
                    "mel_dist": [0.9, 0.4, 0.6][i] + u * 0.01,
                    "spk_sim": float("nan") if i == 2 else 0.8,
                },
            )
        rows.append(ListeningRow(utterance=name, text=text, real=Clip.of(arctic), trials=takes))
    return rows


def _expected_frames(rows: list[ListeningRow]) -> dict[tuple[str, str], int]:
    """(utterance, trial or "real") -> frames the page's WAV must hold."""
    out = {}
    for row in rows:
        out[(row.utterance, "real")] = 64000
        for t, take in row.trials.items():
            out[(row.utterance, t)] = len(np.asarray(take.clip.waveform))
    return out


class _Tags(html.parser.HTMLParser):
    """Every start tag with its attributes, and the page's text (outside <script> and <style>)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._code = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._code = tag in ("script", "style")

    def handle_endtag(self, tag):
        self._code = False

    def handle_data(self, data):
        if not self._code:
            self.text.append(data)


def _parse(page: Path) -> _Tags:
    p = _Tags()
    p.feed(page.read_text(encoding="utf-8"))
    return p


def _sources(page: Path) -> list[str]:
    return [a["src"] for tag, a in _parse(page).tags if tag == "source"]


@pytest.fixture
def arctic(reference_dir) -> Path:
    return reference_dir.joinpath(*ARCTIC)


def test_page_writes_every_clip_as_16bit_wav(tmp_path, arctic):
    rows = _rows(arctic)
    page = write_listening_page(tmp_path / "out", rows, title="myvoice-lr", metric="mel_dist", mode="min")
    assert page.html == tmp_path / "out" / "listen.html" and page.best == "t1"
    srcs = _sources(page.html)
    assert len(srcs) == 3 + 3 * 3 - 1  # a real clip per row, one take per trial and row but the missing one
    want = _expected_frames(rows)
    for row, src in zip(page.rows, [s for s in srcs if s.endswith("/real.wav")]):
        assert row.real.path == page.html.parent / src
    for row in page.rows:
        for key, clip in [("real", row.real), *((t, k.clip) for t, k in row.trials.items())]:
            assert clip.path is not None and clip.path.relative_to(tmp_path / "out" / "listen")
            assert clip.path.relative_to(page.html.parent).as_posix() in srcs
            assert wav_info(clip.path) == (1, 2, SR, want[(row.utterance, key)]), (row.utterance, key)
    assert {p.name for p in (tmp_path / "out" / "listen").iterdir()} == {"utt_a", "utt-b", "utt-b-2"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["listen", "listen.html"]  # no temp left

    text = page.html.read_text()
    assert "no audio" in text  # t2's missing take
    cells = [ln for ln in text.split("<td") if "step 200" in ln]  # t1's cells: the metric first, marked
    assert cells and all(c.index("mel_dist") < c.index("val_loss") and 'class="best"' in c for c in cells)
    assert "t1 ★ best" in text and "spk_sim: n/a" in text  # NaN is not a number to show


def test_page_is_self_contained_and_hostile_names_stay_text(tmp_path, arctic):
    takes = {
        HOSTILE_TRIAL: TrialTake(Clip.of((_tone(0.5), SR)), step=7, metrics={"mel_dist": 0.5}),
        "real": TrialTake(Clip.of((_tone(0.75), SR)), step=8, metrics={"mel_dist": 0.6}),
    }
    rows = [
        ListeningRow(HOSTILE_UTT, HOSTILE_TEXT, Clip.of(arctic), takes),
        ListeningRow("..", "<", Clip.of(arctic), takes),
        ListeningRow("/etc/passwd", ">", Clip.of(arctic), {}),
    ]
    outside_before = sorted(p for p in tmp_path.rglob("*"))
    page = write_listening_page(tmp_path / "out", rows, title="<i>t</i>", metric="mel_dist", mode="min")

    new = sorted(set(tmp_path.rglob("*")) - set(outside_before))
    assert all(p.resolve().is_relative_to((tmp_path / "out").resolve()) for p in new)
    assert len([p for p in new if p.suffix == ".wav"]) == 3 + 2 * 2
    parsed = _parse(page.html)
    tags = {t for t, _ in parsed.tags}
    assert tags <= {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "h1",
        "p",
        "b",
        "table",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "div",
        "audio",
        "source",
        "ul",
        "li",
        "script",
    }, tags
    assert [t for t, _ in parsed.tags].count("script") == 1 and [t for t, _ in parsed.tags].count("b") == 4
    text = "".join(parsed.text)
    assert HOSTILE_UTT in text and HOSTILE_TEXT in text and HOSTILE_TRIAL in text and "<i>t</i>" in text
    for tag, attrs in parsed.tags:  # nothing from elsewhere: every link is a file beside the page
        for name in ("src", "href"):
            if attrs.get(name) is not None:
                assert "://" not in attrs[name] and ".." not in attrs[name].split("/")
                assert not attrs[name].startswith("/")
                assert (page.html.parent / attrs[name]).is_file()
    csp = next(a["content"] for t, a in parsed.tags if t == "meta" and a.get("http-equiv"))
    assert csp.startswith("default-src 'none'; media-src 'self';")
    # the trial called "real" does not overwrite the real recording
    real, fake = (page.rows[0].real.path, page.rows[0].trials["real"].clip.path)
    assert real != fake and wav_info(real)[3] == 64000 and wav_info(fake)[3] == int(0.75 * SR)


def test_rewrite_replaces_the_audio_and_a_bad_clip_changes_nothing(tmp_path, arctic):
    rows = _rows(arctic)
    first = write_listening_page(tmp_path, rows, title="a", metric="mel_dist", mode="min")
    # the written rows read back in (their clips under listen/, which the rewrite replaces)
    again = write_listening_page(tmp_path, list(first.rows[:1]), title="b", metric="spk_sim", mode="max")
    assert {p.name for p in (tmp_path / "listen").iterdir()} == {"utt_a"}
    for t, take in again.rows[0].trials.items():
        assert wav_info(take.clip.path)[3] == len(rows[0].trials[t].clip.waveform)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    garbage = tmp_path / "not-a.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    bad = [ListeningRow("x", "y", Clip.of(garbage), {})]
    with pytest.raises(GsvError, match=r"not-a\.wav: not a readable WAV file"):
        write_listening_page(tmp_path, bad, title="c", metric="mel_dist", mode="min")
    with pytest.raises(GsvError, match=r"gone\.wav: no such audio file"):
        write_listening_page(
            tmp_path,
            [ListeningRow("x", "y", Clip.of(tmp_path / "gone.wav"), {})],
            title="c",
            metric="mel_dist",
            mode="min",
        )
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == {**before, garbage: garbage.read_bytes()}


def test_repeated_names_and_the_umask(tmp_path, arctic):
    """Two rows of one name get two folders; files and folders follow the umask, like every output."""
    rows = [ListeningRow("same", "one", Clip.of(arctic), {}), ListeningRow("same", "two", Clip.of((_tone(1), SR)), {})]
    old = os.umask(0o027)
    try:
        page = write_listening_page(tmp_path / "out", rows, title="u", metric="mel_dist", mode="min")
    finally:
        os.umask(old)
    assert [r.real.path.parent.name for r in page.rows] == ["same", "same-2"]
    assert [wav_info(r.real.path)[3] for r in page.rows] == [64000, SR]
    for p in [page.html, *(tmp_path / "out" / "listen").rglob("*")]:
        assert p.stat().st_mode & 0o777 == (0o750 if p.is_dir() else 0o640), p


def test_best_trial_by_mean_of_the_metric(arctic):
    rows = _rows(arctic)
    assert best_trial(rows, "mel_dist", "min") == "t1" and best_trial(rows, "mel_dist", "max") == "t0"
    assert best_trial(rows, "spk_sim", "max") == "t0"  # NaN is left out, ties go to the first
    assert best_trial(rows, "cer", "min") is None
    with pytest.raises(ValueError, match="mode"):
        best_trial(rows, "mel_dist", "lowest")


@pytest.mark.usefixtures("wandb_env")
def test_wandb_table_round_trips_through_an_offline_run(tmp_path, arctic):
    from gsv_ray.track import Tracker

    rows = _rows(arctic)
    page = write_listening_page(tmp_path / "out", rows, title="s", metric="mel_dist", mode="min")
    with pytest.raises(ValueError, match="clips on disk"):
        wandb_listening_table(rows)
    table = wandb_listening_table(page.rows, metric="mel_dist", best=page.best)
    tracker = Tracker().start({}, project="gsv-test", dir=tmp_path / "run", mode="offline", job_type="tune-summary")
    tracker.log(0, {"tune/listen": table})
    tracker.finish(exit_code=0)

    recs = wr.read_records(wr.find_run_file(tmp_path / "run" / "wandb"))
    cell = next(r["tune/listen"] for r in wr.history_rows(recs) if "tune/listen" in r)
    assert cell["_type"] == "table-file" and cell["nrows"] == 3 and cell["ncols"] == 9
    # W&B keeps a logged table with media as the run's run_table artifact: the table and each audio file
    (art,) = [a for a in wr.artifacts(recs) if a.type == "run_table"]
    files = {c.path: Path(c.local_path) for c in art.manifest.contents}
    saved = json.loads(files["tune/listen.table.json"].read_text())
    assert saved["columns"] == [
        "utterance",
        "text",
        "real",
        "t1",
        "t1 metrics",
        "t0",
        "t0 metrics",
        "t2",
        "t2 metrics",
    ]  # the best trial first
    want = _expected_frames(rows)
    for row, line in zip(rows, saved["data"]):
        got = dict(zip(saved["columns"], line))
        assert got["utterance"] == row.utterance and got["text"] == row.text
        for key in ("real", "t0", "t1", "t2"):
            if (row.utterance, key) not in want:
                assert got[key] is None and got[f"{key} metrics"] is None
                continue
            assert got[key]["_type"] == "audio-file"
            assert wav_info(files[got[key]["path"]]) == (1, 2, SR, want[(row.utterance, key)])
        u = [r.utterance for r in rows].index(row.utterance)
        assert got["t1 metrics"] == {
            "step": 200,
            "mel_dist": 0.4 + u * 0.01,
            "val_loss": 2.0,
            "spk_sim": 0.8,
            "best": True,
        }
        assert "best" not in got["t0 metrics"]
        if got["t2 metrics"] is not None:
            assert got["t2 metrics"]["spk_sim"] is None and got["t2 metrics"]["step"] == 300


# -- a real browser --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium (``.ci/run`` installs it; by hand: ``apt-get install -y chromium``)."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium not found: the listening page's browser test needs it (apt-get install -y chromium)")
    return path


@pytest.fixture
def serve(tmp_path):
    """``serve(folder)`` -> the base URL of a loopback HTTP server for it (stopped after the test)."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _browser_dom(chromium: str, url: str, profile: Path) -> _Tags:
    """The page's DOM after a headless chromium loaded it and its audio metadata."""
    cmd = [
        chromium,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--virtual-time-budget=5000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(profile)})
    assert done.returncode == 0, done.stderr[-2000:]
    dom = _Tags()
    dom.feed(done.stdout)
    return dom


def _unplayable(dom: _Tags, folder: Path) -> dict[str, str]:
    """``{src: why}`` for each <audio> the browser could not play as the WAV on disk says it should."""
    problems: dict[str, str] = {}
    audio: dict[str, str | None] | None = None
    for tag, attrs in dom.tags:
        if tag == "audio":
            audio = attrs
        elif tag == "source" and audio is not None:
            src, state = attrs["src"] or "", audio.get("data-state")
            if audio.get("data-can-play") not in ("maybe", "probably"):
                problems[src] = f"canPlayType({attrs.get('type')}) = {audio.get('data-can-play')!r}"
            elif state != "ok" or int(audio.get("data-ready") or 0) < 1:
                problems[src] = f"state {state}, readyState {audio.get('data-ready')}"
            else:
                _, _, rate, frames = wav_info(folder / src)
                if not math.isclose(float(audio["data-duration"] or "nan"), frames / rate, rel_tol=1e-3):
                    problems[src] = f"duration {audio['data-duration']} s, the file holds {frames / rate} s"
            audio = None
    return problems


@pytest.mark.slow
def test_every_audio_plays_in_a_real_browser(tmp_path, arctic, chromium, serve):
    rows = _rows(arctic) + [ListeningRow(HOSTILE_UTT, HOSTILE_TEXT, Clip.of(arctic), {})]
    page = write_listening_page(tmp_path / "out", rows, title="listen", metric="mel_dist", mode="min")
    dom = _browser_dom(chromium, f"{serve(page.html.parent)}/listen.html", tmp_path / "profile")
    assert len([t for t, _ in dom.tags if t == "audio"]) == 4 + 3 * 3 - 1
    assert _unplayable(dom, page.html.parent) == {}
    body = next(a for t, a in dom.tags if t == "body")
    assert "data-pwned" not in body and HOSTILE_TEXT in "".join(dom.text)  # the hostile text stayed text
    assert "cannot play" not in "".join(dom.text)


@pytest.mark.slow
def test_the_browser_check_catches_broken_audio(tmp_path, arctic, chromium, serve):
    page = write_listening_page(tmp_path / "out", _rows(arctic), title="listen", metric="mel_dist", mode="min")
    folder = page.html.parent
    truncated, garbage, missing = (
        page.rows[0].real.path,
        page.rows[1].trials["t0"].clip.path,
        page.rows[2].trials["t1"].clip.path,
    )
    truncated.write_bytes(truncated.read_bytes()[: 44 + 2 * SR])  # the header says 4 s, 1 s is left
    garbage.write_bytes(b"RIFF" + os.urandom(2000))
    missing.unlink()  # the page's src points at no file
    dom = _browser_dom(chromium, f"{serve(folder)}/listen.html", tmp_path / "profile")
    problems = _unplayable(dom, folder)
    rel = [p.relative_to(folder).as_posix() for p in (truncated, garbage, missing)]
    assert set(problems) == set(rel), problems
    assert problems[rel[0]].startswith("duration 1 s") and problems[rel[0]].endswith("holds 4.0 s")
    assert problems[rel[1]] == problems[rel[2]] == "state error, readyState 0"
    assert f"cannot play {rel[2]}" in "".join(dom.text)  # the reader sees it too
