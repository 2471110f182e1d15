"""The end-of-search outputs from plain trial data: rich table, results.json + summary.png (real
files), and the tune-summary W&B run written offline and read back from its ``.wandb`` file."""

from __future__ import annotations

import json
import math
import re

import pytest

from gsv_ray.track import wandb_file as wr
from gsv_ray.tune.results import (
    BEST_MARK,
    TABLE_COLUMNS,
    TrialSummary,
    TuneOutcome,
    load_results,
    log_summary_run,
    pick_best,
    results_table,
    write_results,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def wandb_env(tmp_path, monkeypatch):
    """Hermetic W&B: no key, no home-dir files, no inherited WANDB_* settings."""
    for var in (
        "WANDB_API_KEY",
        "WANDB_IDENTITY_TOKEN_FILE",
        "WANDB_MODE",
        "WANDB_DIR",
        "WANDB_BASE_URL",
        "WANDB_PROJECT",
        "WANDB_ENTITY",
        "WANDB_RUN_ID",
        "WANDB_RESUME",
        "WANDB_RUN_GROUP",
        "WANDB_JOB_TYPE",
        "WANDB_NAME",
        "RANK",
    ):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "_wbhome"
    monkeypatch.setenv("NETRC", str(home / "netrc"))
    for var, sub in (
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_ARTIFACT_DIR", "artifacts"),
    ):
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MPLBACKEND", "Agg")


def _warmup_lr(base: float, warmup: int, steps: int) -> list[tuple[int, float]]:
    return [(s, base * min(1.0, (s + 1) / max(warmup, 1)) * (0.999**s)) for s in range(0, steps + 1, 10)]


def _outcome(interrupted: bool = True) -> TuneOutcome:
    best = TrialSummary(
        trial_id="a1b2_00000",
        lr_scale=0.3,
        warmup_steps=50,
        status="completed",
        steps=400,
        best_value=0.812,
        best_step=300,
        val_history=[(100, 1.2), (200, 0.9), (300, 0.812), (400, 0.83)],
        lr_history=_warmup_lr(3e-5, 50, 400),
        export_paths=["/runs/t0/export/voice_e3_s300.pth", "/runs/t0/export/voice-e3.ckpt"],
        wandb_run_id="run00000",
    )
    stopped = TrialSummary(
        trial_id="a1b2_00001",
        lr_scale=1.0,
        warmup_steps=0,
        status="early-stopped",
        steps=200,
        best_value=1.05,
        best_step=100,
        val_history=[(100, 1.05), (200, float("nan"))],
        lr_history=_warmup_lr(1e-4, 0, 200),
        wandb_run_id="run00001",
    )
    errored = TrialSummary(
        trial_id="a1b2_00002",
        lr_scale=0.05,
        warmup_steps=200,
        status="failed",
        error="RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\nTraceback (most recent call last):\n  ...",
        steps=12,
        lr_history=_warmup_lr(5e-6, 200, 12),
    )
    running = TrialSummary(
        trial_id="a1b2_00003",
        lr_scale=0.1,
        warmup_steps=100,
        status="interrupted",
        steps=150,
        best_value=0.95,
        best_step=100,
        val_history=[(100, 0.95)],
        lr_history=_warmup_lr(1e-5, 100, 150),
        wandb_run_id="run00003",
    )
    trials = [stopped, errored, best, running]
    return TuneOutcome(
        name="tune-voiceA",
        stage="sovits",
        version="v2",
        metric="val/loss",
        mode="min",
        trials=trials,
        interrupted=interrupted,
        best=pick_best(trials),
    )


def test_pick_best_ignores_missing_and_nan():
    o = _outcome()
    assert o.best is not None and o.best.trial_id == "a1b2_00000"
    nan = TrialSummary("x", 1.0, 0, "completed", best_value=float("nan"))
    assert pick_best([nan, o.trials[1]]) is None
    assert pick_best([]) is None


def test_write_results_json_and_png(tmp_path):
    o = _outcome()
    out = tmp_path / "tune-out"
    paths = write_results(o, out)
    assert paths == {"json": out / "results.json", "png": out / "summary.png"}
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "summary.png"]  # no temp files left

    raw = paths["json"].read_text(encoding="utf-8")
    assert "NaN" not in raw and "Infinity" not in raw
    data = json.loads(raw)  # strict JSON
    assert data["name"] == "tune-voiceA" and data["stage"] == "sovits" and data["version"] == "v2"
    assert data["metric"] == "val/loss" and data["mode"] == "min" and data["interrupted"] is True
    assert data["best_trial_id"] == "a1b2_00000" and data["best"]["lr_scale"] == 0.3
    assert data["status_counts"] == {"early-stopped": 1, "failed": 1, "completed": 1, "interrupted": 1}
    by_id = {t["trial_id"]: t for t in data["trials"]}
    assert by_id["a1b2_00001"]["val_history"] == [[100, 1.05], [200, None]]  # NaN -> null
    assert by_id["a1b2_00002"]["best_value"] is None and by_id["a1b2_00002"]["error"].startswith("RuntimeError")

    back = load_results(paths["json"])
    assert back.best is not None and back.best is back.trials[2]
    assert [t.trial_id for t in back.trials] == [t.trial_id for t in o.trials]
    for a, b in zip(back.trials, o.trials):
        for f in (
            "trial_id",
            "lr_scale",
            "warmup_steps",
            "status",
            "error",
            "steps",
            "best_value",
            "best_step",
            "lr_history",
            "export_paths",
            "wandb_run_id",
        ):
            assert getattr(a, f) == getattr(b, f), f
        assert len(a.val_history) == len(b.val_history)
        for (sa, va), (sb, vb) in zip(a.val_history, b.val_history):
            assert sa == sb and (va == vb or (math.isnan(va) and math.isnan(vb)))
    assert isinstance(back.trials[2].lr_history[0], tuple)

    png = paths["png"].read_bytes()
    assert png[:8] == PNG_SIGNATURE
    assert 5_000 < len(png) < 300_000
    from matplotlib.image import imread

    img = imread(paths["png"])
    assert img.ndim == 3 and img.shape[2] in (3, 4) and img.shape[0] >= 300 and img.shape[1] >= 800
    assert img.shape[1] > img.shape[0]  # two panels side by side

    # rewriting replaces both files, still atomically
    o.interrupted = False
    write_results(o, out)
    assert json.loads((out / "results.json").read_text())["interrupted"] is False
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "summary.png"]


def test_mode_max_ranks_the_highest_first(tmp_path):
    """`--mode max` (e.g. an accuracy): the best trial, the table's order and results.json follow it."""
    from rich.console import Console

    o = _outcome(interrupted=False)
    o.metric, o.mode = "val/top3_acc", "max"
    o.best = pick_best(o.trials, o.mode)
    assert o.best.trial_id == "a1b2_00001"  # 1.05: the highest
    console = Console(record=True, width=200, color_system=None)
    console.print(results_table(o))
    text = console.export_text()
    order = [m.group(0) for ln in text.splitlines() if "best:" not in ln for m in [re.search(r"a1b2_\d{5}", ln)] if m]
    assert order == ["a1b2_00001", "a1b2_00003", "a1b2_00000", "a1b2_00002"] and " top3_acc " in text
    data = json.loads(write_results(o, tmp_path)["json"].read_text())
    assert (data["metric"], data["mode"], data["best_trial_id"]) == ("val/top3_acc", "max", "a1b2_00001")


def test_results_of_format_1_read_back(tmp_path):
    """A results.json written before --metric (best_val_loss, no refit) still reads."""
    o = _outcome(interrupted=False)
    data = o.to_json()
    data["format"] = "gsv-ray-tune-results/1"
    for t in data["trials"]:
        t["best_val_loss"] = t.pop("best_value")
    data.pop("refit"), data.pop("best_files")
    (tmp_path / "results.json").write_text(json.dumps(data))
    back = load_results(tmp_path / "results.json")
    assert back.best.trial_id == "a1b2_00000" and back.best.best_value == 0.812 and back.refit is None


def test_write_results_with_no_losses(tmp_path):
    """Every trial errored before validating: still a valid JSON and figure."""
    t = TrialSummary("z_00000", 0.5, 10, "failed", error="ValueError: bad data")
    o = TuneOutcome(name="t", stage="gpt", version=None, trials=[t], best=pick_best([t]))
    paths = write_results(o, tmp_path)
    assert json.loads(paths["json"].read_text())["best"] is None
    assert paths["png"].read_bytes()[:8] == PNG_SIGNATURE


def test_results_table_text():
    from rich.console import Console

    o = _outcome()
    console = Console(record=True, width=200, color_system=None)
    console.print(results_table(o))
    text = console.export_text()
    for t in o.trials:
        assert t.trial_id in text
    assert f"{BEST_MARK} a1b2_00000" in text
    assert "INTERRUPTED" in text and "early-stopped" in text and "interrupted" in text and "failed" in text
    # a failed trial's cause: one line under the table (a long error folded in a cell was unreadable)
    from gsv_ray.tune.results import failure_lines

    (line,) = failure_lines(o)
    assert "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" in line and "\n" not in line
    assert "Traceback" not in line  # only the error's first line
    for col in ("trial", "lr_scale", "warmup", "loss", "at step", "steps", "status"):
        assert col in text
    best_line = next(ln for ln in text.splitlines() if "a1b2_00000" in ln and BEST_MARK in ln)
    assert "0.8120" in best_line and "300" in best_line and "400" in best_line
    order = [m.group(0) for ln in text.splitlines() if "best:" not in ln for m in [re.search(r"a1b2_\d{5}", ln)] if m]
    assert order == ["a1b2_00000", "a1b2_00003", "a1b2_00001", "a1b2_00002"]  # by loss; the errored one last

    o.interrupted = False
    console = Console(record=True, width=200, color_system=None)
    console.print(results_table(o))
    assert "INTERRUPTED" not in console.export_text()


def test_log_summary_run_offline(tmp_path):
    o = _outcome()
    run_dir = tmp_path / "tune-run"
    paths = write_results(o, run_dir)
    tracker = log_summary_run(o, project="gsv-test", mode=None, dir=run_dir, group=o.name, png_path=paths["png"])
    assert tracker.mode == "offline"  # no API key -> offline
    recs = wr.read_records(wr.find_run_file(run_dir / "wandb"))
    assert tracker.run_file is not None and tracker.run_file == wr.find_run_file(run_dir / "wandb")

    info = wr.run_info(recs)
    assert info.job_type == "tune-summary" and info.group == "tune-voiceA" and info.project == "gsv-test"
    assert info.name == "tune-voiceA-summary"
    assert "exit" in wr.grouped(recs)
    cfg = wr.run_config(recs)
    assert cfg["tune/name"] == "tune-voiceA" and cfg["num_trials"] == 4 and cfg["interrupted"] is True

    rows = [r for r in wr.history_rows(recs) if "tune/results" in r]
    assert len(rows) == 1
    tab = rows[0]["tune/results"]
    assert tab["_type"] == "table-file" and tab["nrows"] == 4 and tab["ncols"] == len(TABLE_COLUMNS)
    wdir = tracker.run_file.parent
    table = json.loads((wdir / "files" / tab["path"]).read_text())
    assert table["columns"] == list(TABLE_COLUMNS)
    by_id = {r[0]: dict(zip(TABLE_COLUMNS, r)) for r in table["data"]}
    assert by_id["a1b2_00000"] == {
        "trial_id": "a1b2_00000",
        "lr_scale": 0.3,
        "warmup_steps": 50,
        "best_value": 0.812,
        "best_step": 300,
        "steps": 400,
        "status": "completed",
        "wandb_run_id": "run00000",
    }
    assert by_id["a1b2_00002"]["best_value"] is None and by_id["a1b2_00002"]["status"] == "failed"

    img = rows[0]["tune/summary"]
    assert img["_type"] == "image-file" and img["format"] == "png"
    assert (wdir / "files" / img["path"]).read_bytes()[:8] == PNG_SIGNATURE

    s = wr.summary(recs)
    assert s["best/trial_id"] == "a1b2_00000" and s["best/lr_scale"] == 0.3 and s["best/warmup_steps"] == 50
    assert s["best/metric"] == "val/loss" and s["best/mode"] == "min"
    assert s["best/value"] == 0.812 and s["best/step"] == 300 and s["best/wandb_run_id"] == "run00000"
    assert s["tune/trials"] == 4 and s["tune/interrupted"] is True and s["tune/status/failed"] == 1
    assert s["tune/results"]["_type"] == "table-file" and s["tune/summary"]["_type"] == "image-file"


def test_log_summary_run_renders_png_when_not_given(tmp_path):
    o = _outcome(interrupted=False)
    log_summary_run(o, project="gsv-test", mode="offline", dir=tmp_path, group="g2")
    assert (tmp_path / "summary.png").read_bytes()[:8] == PNG_SIGNATURE
    recs = wr.read_records(wr.find_run_file(tmp_path / "wandb"))
    assert wr.run_info(recs).group == "g2"
    assert any(r.get("tune/summary", {}).get("_type") == "image-file" for r in wr.history_rows(recs))


def test_log_summary_run_disabled_is_noop(tmp_path):
    tracker = log_summary_run(_outcome(), project="gsv-test", mode="disabled", dir=tmp_path, group="g")
    assert tracker.mode == "disabled" and not tracker.enabled and tracker.run_file is None
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "summary.png").exists()


def test_the_demo_never_runs_over_an_earlier_demo(tmp_path):
    """`gsv-ray demo` twice in one folder: the second is a new run beside the first (a search never
    writes into another's results)."""
    from gsv_ray.demo import DemoOptions, demo_config

    cfg, opts = demo_config(DemoOptions(dir=str(tmp_path), max_steps=6))
    assert opts.name == "demo" and cfg.output_dir.endswith("runs/demo")
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    cfg, opts = demo_config(DemoOptions(dir=str(tmp_path), max_steps=6))
    assert opts.name == "demo-2" and cfg.output_dir.endswith("runs/demo-2")
