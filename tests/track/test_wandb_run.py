"""Real offline W&B runs, read back from their ``run-<id>.wandb`` files (no mocks)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from gsv_ray.track import Tracker, rebuild_config, rebuild_table_rows, resolve_mode
from gsv_ray.track import wandb_file as wr
from gsv_ray.track.wandb_run import has_api_key, jsonable, to_pcm16


def _config(tmp_path: Path) -> dict:
    return {
        "stage": "sovits",
        "version": "v2",
        "lr": {"g": 1e-4, "d": 1e-4, "text_low_lr_rate": 0.4},
        "warmup_epochs": 2,
        "init": {"path": tmp_path / "in.pth", "sha256": "ab" * 32},
        "base": None,
        "batch_size": (4, 8),
    }


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, fixtures_dir, sovits_report):
    """One finished run: config, rebuild report, 10 steps, audio at step 5, val at 9, an artifact."""
    tmp_path = tmp_path_factory.mktemp("full")
    mp = pytest.MonkeyPatch()  # module-scoped env isolation (the autouse fixture is per test)
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "RANK"):
        mp.delenv(var, raising=False)
    home = tmp_path / "_wbhome"
    for var, sub in (
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_ARTIFACT_DIR", "artifacts"),
        ("NETRC", "netrc"),
    ):
        mp.setenv(var, str(home / sub))
    run_dir = tmp_path / "run"
    export = run_dir / "export" / "voice_e1_s10.pth"
    export.parent.mkdir(parents=True)
    export.write_bytes(b"\0" * 1000)
    t = Tracker().start(
        _config(tmp_path),
        project="gsv-test",
        mode="offline",
        dir=run_dir,
        group="tune-abc",
        job_type="trial",
        name="trial_00001",
        run_id="trial00001",
    )
    cfg_rebuild = t.log_rebuild(sovits_report)
    sr = 32000
    wav = np.sin(2 * np.pi * 440 * np.arange(sr // 4) / sr).astype(np.float32) * 0.5
    audio_paths = []
    for step in range(10):
        t.log(
            step,
            {
                "train/loss": 1.0 / (step + 1),
                "train/lr": 1e-4 * (step + 1) / 10,
                "train/grad_norm": torch.tensor(0.5 + step),
                "train/step_time": 0.1,
                "train/samples_per_s": np.float32(40.0),
            },
        )
        if step == 5:  # validation samples at the same step as that step's losses: one merged row
            audio_paths = t.log_audio(5, [("utt 01", wav, sr), ("utt02", torch.from_numpy(wav)[None], sr)])
    t.log(9, {"val/loss": 0.7})
    with pytest.warns(UserWarning, match="step 3 < 9"):
        t.log(3, {"late/x": 1.0})  # W&B drops rows below its current step; the tracker warns
    t.log_artifact([export], "voice sovits v2", metadata={"version": "v2", "step": 10})
    wdir = t.wandb_dir
    t.finish()
    run_file = t.run_file
    mp.undo()
    recs = wr.read_records(wr.find_run_file(run_dir / "wandb"))
    return {
        "dir": run_dir,
        "wandb_dir": wdir,
        "records": recs,
        "audio": audio_paths,
        "cfg_rebuild": cfg_rebuild,
        "report": sovits_report,
        "run_file": run_file,
    }


def test_run_info_and_folder(full_run):
    assert full_run["wandb_dir"].parent == full_run["dir"] / "wandb"
    assert full_run["wandb_dir"].name.startswith("offline-run-") and full_run["wandb_dir"].name.endswith("-trial00001")
    info = wr.run_info(full_run["records"])
    assert info.id == "trial00001" and info.group == "tune-abc"
    assert info.job_type == "trial" and info.name == "trial_00001" and info.project == "gsv-test"
    assert "exit" in wr.grouped(full_run["records"])  # finish() waited for the file to be flushed
    assert wr.last_record_type(full_run["run_file"]) == "exit"


def test_config_has_values_and_rebuild_counts(full_run, tmp_path):
    cfg = wr.run_config(full_run["records"])
    assert cfg["lr"] == {"g": 1e-4, "d": 1e-4, "text_low_lr_rate": 0.4}
    assert cfg["warmup_epochs"] == 2 and cfg["version"] == "v2" and cfg["base"] is None
    assert cfg["init"]["sha256"] == "ab" * 32 and cfg["init"]["path"].endswith("in.pth")
    assert cfg["batch_size"] == [4, 8]
    counts = full_run["report"].counts()
    assert counts["generator"]["initialised"] > 0  # the fixture really exercises non-loaded fates
    for model, c in counts.items():
        for fate, n in c.items():
            assert cfg[f"rebuild/{model}/{fate}"] == n
    assert cfg["rebuild/verdict"] == "ok" and cfg["rebuild/version"] == "v2"
    assert full_run["cfg_rebuild"] == {k: cfg[k] for k in full_run["cfg_rebuild"]}


def test_history_losses_and_lr_in_order(full_run):
    rows = [r for r in wr.history_rows(full_run["records"]) if "train/loss" in r]
    assert [r["_step"] for r in rows] == list(range(10))
    for r in rows:
        s = r["_step"]
        assert math.isclose(r["train/loss"], 1.0 / (s + 1))
        assert math.isclose(r["train/lr"], 1e-4 * (s + 1) / 10)
        assert math.isclose(r["train/grad_norm"], 0.5 + s) and r["train/samples_per_s"] == 40.0
    val = [r for r in wr.history_rows(full_run["records"]) if "val/loss" in r]
    assert [(r["_step"], r["val/loss"]) for r in val] == [(9, 0.7)]
    assert not [r for r in wr.history_rows(full_run["records"]) if "late/x" in r]


def test_rebuild_table_recorded(full_run):
    rows = wr.history_rows(full_run["records"])
    tabs = [r for r in rows if "rebuild/table" in r]
    assert len(tabs) == 1 and tabs[0]["_step"] == 0
    tab = tabs[0]["rebuild/table"]
    expect = rebuild_table_rows(full_run["report"])
    assert tab["_type"] == "table-file" and tab["nrows"] == len(expect) and tab["ncols"] == 6
    # the table's JSON lands in the run's files/ (and a run_table artifact carries it for sync)
    table_json = full_run["wandb_dir"] / "files" / tab["path"]
    import json

    data = json.loads(table_json.read_text())
    assert data["columns"] == ["target", "keys", "fate", "count", "reason", "source"]
    assert data["data"] == expect
    assert {(r[0], r[1], r[2]) for r in expect} >= {("generator", "enc_q.*", "initialised")}
    assert sum(r[3] for r in expect if r[2] == "initialised") == sum(
        c["initialised"] for c in full_run["report"].counts().values()
    )
    arts = wr.artifacts(full_run["records"])
    assert any(a.type == "run_table" for a in arts)
    assert wr.summary(full_run["records"])["rebuild/table"]["_type"] == "table-file"


def test_audio_entries(full_run):
    rows = [r for r in wr.history_rows(full_run["records"]) if any(k.startswith("val/audio/") for k in r)]
    assert len(rows) == 1 and rows[0]["_step"] == 5
    a = rows[0]["val/audio/utt 01"]
    assert a["_type"] == "audio-file" and a["caption"] == "utt 01" and a["path"].endswith(".wav")
    assert rows[0]["val/audio/utt02"]["_type"] == "audio-file"
    assert (full_run["wandb_dir"] / "files" / a["path"]).is_file()
    for p in full_run["audio"]:
        assert p.parent == full_run["dir"] / "samples" / "step_00000005"
        with wave.open(str(p)) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 32000, 8000)


def test_model_artifact_record(full_run):
    arts = [a for a in wr.artifacts(full_run["records"]) if a.type == "model"]
    assert len(arts) == 1
    a = arts[0]
    assert a.name == "voice-sovits-v2"
    import json

    meta = json.loads(a.metadata)
    assert meta["version"] == "v2" and meta["step"] == 10 and meta["files"] == {"voice_e1_s10.pth": 1000}
    (entry,) = a.manifest.contents
    assert entry.path == "voice_e1_s10.pth" and entry.size == 1000
    assert Path(entry.local_path) == full_run["dir"] / "export" / "voice_e1_s10.pth"  # immutable: no staging copy


def test_ray_worker_export_artifact_is_not_staged(tmp_path, wandb_env, sovits_report):
    """A Ray worker's exports leave its scratch; on the driver's node the artifact names the file
    where the driver places it (``final_dir``: -o/trials/<id>) instead of W&B staging a full copy
    in its data folder (84 MB per trial of the demo): the staging folder holds no copy, the run's
    artifact record points at the placed file, which holds the same bytes."""
    from types import SimpleNamespace

    from gsv_ray.train.tracking import Tracking

    scratch = tmp_path / "scratch" / "run"
    export = scratch / "SoVITS_weights_v2" / "t_e1_s2.pth"
    export.parent.mkdir(parents=True)
    data = os.urandom(4096) + bytes(1 << 20)
    export.write_bytes(data)
    final = tmp_path / "out" / "trials" / "t1"
    tr = Tracking(
        scratch,
        project="gsv-test",
        mode="offline",
        name="t1",
        run_id="t1trial0",
        group="g",
        job_type="trial",
        stage_artifacts=True,
        final_dir=final,
    )
    tr.begin({"stage": "sovits", "version": "v2"}, SimpleNamespace(report=sovits_report))
    tr.log_exports([export], stage="sovits", version="v2", step=2)
    tr.finish()
    staging = wandb_env / "data" / "artifacts" / "staging"  # (W&B stages its own ~1 KB table files there)
    staged = [p for p in staging.rglob("*") if p.is_file() and p.stat().st_size == len(data)]
    assert staged == [], "W&B staged a copy of the export"
    placed = final / "SoVITS_weights_v2" / export.name
    assert placed.read_bytes() == data
    (a,) = [a for a in wr.artifacts(wr.read_records(wr.find_run_file(scratch / "wandb"))) if a.type == "model"]
    (entry,) = a.manifest.contents
    assert entry.path == export.name and entry.size == len(data) and Path(entry.local_path) == placed


def test_wandb_sync_dry_run(full_run):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("WANDB_API_KEY", None)
    exe = Path(sys.executable).parent / "wandb"
    r = subprocess.run(
        [str(exe), "sync", "--dry-run", str(full_run["wandb_dir"])], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_resume_same_id_offline(tmp_path):
    def session(steps, extra):
        t = Tracker().start(
            {"a": 1, **extra},
            project="gsv-test",
            mode="offline",
            dir=tmp_path,
            group="g",
            job_type="trial",
            name="t1",
            run_id="resumeme",
            resume="allow",
        )
        for s in steps:
            t.log(s, {"train/loss": float(s)})
        t.finish()

    session(range(0, 4), {})
    session(range(4, 7), {"resumed_from_step": 3})
    files = wr.find_run_files(tmp_path / "wandb")
    # W&B offline cannot resume locally: a second folder offline-run-<time>-resumeme (with "-1"
    # appended when <time> collides to the second), a second run file, the same id
    assert len(files) == 2 and files[0].parent != files[1].parent
    assert all("-resumeme" in f.parent.name and f.name == "run-resumeme.wandb" for f in files)
    first, second = (wr.read_records(f) for f in files)
    for recs in (first, second):
        info = wr.run_info(recs)
        assert (info.id, info.group, info.name) == ("resumeme", "g", "t1")
        assert wr.grouped(recs)["run"][0].resume  # resume was requested; "resumed" is a server answer
    assert [r["_step"] for r in wr.history_rows(first)] == [0, 1, 2, 3]
    assert [r["_step"] for r in wr.history_rows(second)] == [4, 5, 6]
    assert wr.run_config(second)["resumed_from_step"] == 3
    assert "resumed_from_step" not in wr.run_config(first)


def test_disabled_is_a_noop(tmp_path):
    t = Tracker().start({"a": 1}, project="p", mode="disabled", dir=tmp_path / "run")
    assert not t.enabled and t.mode == "disabled" and t.run_id is None
    assert t.log_rebuild({"counts": {"generator": {"loaded": 3}}, "verdict": "ok"})["rebuild/generator/loaded"] == 3
    t.log(0, {"loss": 1.0})
    assert t.log_audio(0, [("u", np.zeros(10), 16000)]) == []
    assert t.log_artifact([tmp_path / "missing.pth"], "m") is None
    t.update_config({"b": 2})
    t.set_summary({"best": 1})
    t.finish()
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "run" / "wandb").exists()


def test_non_zero_rank_is_disabled(tmp_path):
    t = Tracker().start({}, project="p", mode="offline", dir=tmp_path, rank=1)
    assert t.mode == "disabled" and not t.enabled
    assert not (tmp_path / "wandb").exists()


def test_online_without_key_falls_back_offline(tmp_path, capsys):
    assert not has_api_key()
    t = Tracker().start({"a": 1}, project="p", mode="online", dir=tmp_path, run_id="fallback1")
    try:
        assert t.mode == "offline" and t.enabled
        err = capsys.readouterr().err
        assert "no API key" in err and "offline" in err and err.count("\n") == 1
        t.log(0, {"loss": 1.0})
    finally:
        t.finish()
    assert wr.run_info(wr.read_records(wr.find_run_file(tmp_path / "wandb"))).id == "fallback1"


def test_online_start_failure_falls_back_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)  # a key, but a server that refuses connections
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    t = Tracker().start({"a": 1}, project="p", mode=None, dir=tmp_path, run_id="unreach1", settings={"init_timeout": 2})
    try:
        assert t.mode == "offline" and t.enabled
        assert "online start failed" in capsys.readouterr().err
    finally:
        t.finish()
    (offline,) = [f for f in wr.find_run_files(tmp_path / "wandb") if f.parent.name.startswith("offline-run-")]
    recs = wr.read_records(offline)
    assert wr.run_info(recs).id == "unreach1" and "exit" in wr.grouped(recs)


def test_wandb_dir_env_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    t = Tracker().start({}, project="p", mode="offline", dir=tmp_path / "run", run_id="wdir1")
    t.finish()
    assert wr.find_run_file(tmp_path / "elsewhere" / "wandb").name == "run-wdir1.wandb"
    assert not (tmp_path / "run" / "wandb").exists()


def test_resolve_mode(tmp_path, monkeypatch):
    assert resolve_mode("disabled") == ("disabled", None)
    assert resolve_mode("offline") == ("offline", None)
    assert resolve_mode(None) == ("offline", None)  # no key anywhere
    mode, notice = resolve_mode("online")
    assert mode == "offline" and notice
    assert resolve_mode(None, {"WANDB_MODE": "disabled"}) == ("disabled", None)
    assert resolve_mode("offline", {"WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40}) == ("offline", None)
    assert resolve_mode(None, {"WANDB_API_KEY": "x" * 40}) == ("online", None)
    assert resolve_mode("online", {"WANDB_API_KEY": "x" * 40}) == ("online", None)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "0" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert has_api_key() and resolve_mode(None) == ("online", None)
    with pytest.raises(ValueError, match="unknown W&B mode"):
        resolve_mode("sometimes")
    with pytest.raises(ValueError, match="resume"):
        Tracker().start({}, project="p", mode="disabled", dir=tmp_path, resume="yes")


def test_helpers(sovits_report):
    assert jsonable({"p": Path("/a"), "t": (1, 2), "n": np.float32(1.5), "x": torch.tensor(2)}) == {
        "p": "/a",
        "t": [1, 2],
        "n": 1.5,
        "x": 2,
    }
    pcm = to_pcm16(np.array([-2.0, -1.0, 0.0, 0.5, 1.0, np.nan]))
    assert pcm.dtype == np.int16 and pcm.tolist() == [-32767, -32767, 0, 16384, 32767, 0]
    with pytest.raises(ValueError, match="mono"):
        to_pcm16(np.zeros((2, 10)))
    cfg = rebuild_config(sovits_report.to_json())  # the JSON form works as well as the object
    assert cfg == rebuild_config(sovits_report)


def test_reader_handles_records_across_blocks(tmp_path):
    """A config record larger than a 32 KiB block (first/middle/last chunks) and many rows."""
    blob = "".join(chr(65 + i % 26) for i in range(80_000))
    t = Tracker().start({"blob": blob}, project="p", mode="offline", dir=tmp_path, run_id="big1")
    for s in range(400):
        t.log(s, {"train/loss": float(s), "train/lr": 1e-4})
    t.finish()
    f = wr.find_run_file(tmp_path / "wandb")
    assert f.stat().st_size > 3 * 32 * 1024
    recs = wr.read_records(f)
    assert wr.run_config(recs)["blob"] == blob
    assert [r["_step"] for r in wr.history_rows(recs)] == list(range(400))
    assert wr.last_record_type(f) == "exit"
