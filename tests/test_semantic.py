"""``gsv-ray semantic``: upstream's semantic-token step (FORMATS section 6), on real files, real Ray.

Every model here is a real export written in GPT-SoVITS's format; the golden one carries the goldens'
rule weights, so the tokens must equal ``out.extract_latent.codes`` exactly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from gsv_ray.errors import GsvError
from gsv_ray.semantic import HEADER, extract_semantic, read_names
from tests.conftest import run_cli
from tests.support.goldens import load_io, manifest_state_dict

TSV = "6-name2semantic.tsv"
RAY_ENV = {"RAY_AUTH_MODE": "disabled"}


# ---------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gsv_cache")


@pytest.fixture(scope="module")
def env(cache_dir: Path) -> dict[str, str]:
    return {"GSV_RAY_CACHE": str(cache_dir), **RAY_ENV}


@pytest.fixture(scope="module")
def golden_ssl(goldens_dir: Path) -> torch.Tensor:
    return load_io(goldens_dir / "sovits_G_inputs.safetensors")["in.ssl"]


@pytest.fixture(scope="module")
def golden_codes(goldens_dir: Path) -> torch.Tensor:
    return load_io(goldens_dir / "sovits_G_v2.io.safetensors")["out.extract_latent.codes"]


@pytest.fixture(scope="module")
def golden_model(goldens_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A v2 SoVITS export (upstream's format: fp16, HParams config, tag) with the goldens' rule weights."""
    from gsv_ray.io.writers import write_sovits_export

    state = manifest_state_dict(goldens_dir / "sovits_G_v2.weights.json")
    config = json.loads((goldens_dir / "sovits_G_v2.config.json").read_text())
    path = tmp_path_factory.mktemp("models") / "golden_e1_s1.pth"
    return write_sovits_export(path, state, config=config, info="1epoch_1iteration", version="v2")


def make_experiment(
    root: Path, items: dict[str, torch.Tensor | None], order: list[str] | None = None, extra_lines: list[str] = ()
) -> Path:
    """``root`` as ``logs/<exp>``: ``2-name2text.txt`` in ``order``, ``4-cnhubert/<name>.pt`` for non-None items."""
    (root / "4-cnhubert").mkdir(parents=True, exist_ok=True)
    lines = [f"{name}\tn i2 h ao3\t[2, 2]\tni hao" for name in (order or list(items))]
    (root / "2-name2text.txt").write_text("\n".join([*lines, *extra_lines]) + "\n", encoding="utf-8")
    for name, feats in items.items():
        if feats is not None:
            torch.save(feats.clone(), root / "4-cnhubert" / f"{name}.pt")
    return root


def random_items(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Utterances of varied length (odd frame counts included), fp16 and fp32 features as upstream writes."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(n):
        frames = int(torch.randint(21, 301, (), generator=g))
        t = torch.randn(1, 768, frames, generator=g)
        out[f"spk_{i:03d}.wav"] = t.half() if i % 3 == 0 else t
    return out


def tsv_rows(path: Path) -> list[tuple[str, list[int]]]:
    data = path.read_bytes()
    assert data.endswith(b"\n") and not data.endswith(b"\n\n")
    lines = data.decode("utf-8").split("\n")[:-1]
    assert lines[0] == HEADER
    rows = []
    for line in lines[1:]:
        name, ids = line.split("\t")
        rows.append((name, [int(x) for x in ids.split(" ")]))
    return rows


def assert_one_line_error(proc, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip("\n")
    assert "\n" not in err and err.startswith("gsv-ray: error: "), proc.stderr
    for n in needles:
        assert n in err, (n, err)
    return err


# ---------------------------------------------------------------- golden, byte-exact
@pytest.mark.slow
def test_golden_tokens_and_bytes(tmp_path: Path, golden_model: Path, golden_ssl, golden_codes, env) -> None:
    exp = make_experiment(tmp_path / "exp", {"golden_001.wav": golden_ssl})
    proc = run_cli("semantic", "--data", str(exp), "--model", str(golden_model), env=env, in_process=True)
    assert proc.returncode == 0, proc.stderr
    assert "ready for semantic (sovits v2)" in proc.stdout and "wrote 1 of 1" in proc.stdout
    ids = golden_codes[0, 0, :].tolist()
    assert len(ids) == 24
    want = b"item_name\tsemantic_audio\n" + b"golden_001.wav\t" + " ".join(map(str, ids)).encode() + b"\n"
    assert (exp / TSV).read_bytes() == want
    assert sorted(p.name for p in exp.iterdir()) == ["2-name2text.txt", "4-cnhubert", TSV]  # no temp file left


def test_golden_fp16_features_same_tokens(
    tmp_path: Path, golden_model: Path, golden_ssl, golden_codes, cache_dir: Path
) -> None:
    """Library call; fp16 feature files (upstream's is_half output) are read as fp32."""
    exp = make_experiment(tmp_path / "exp", {"a.wav": golden_ssl, "b.wav": golden_ssl.half()})
    rng, threads = torch.random.get_rng_state(), torch.get_num_threads()
    r = extract_semantic(exp, golden_model, cache_root=cache_dir)
    assert torch.equal(torch.random.get_rng_state(), rng) and torch.get_num_threads() == threads  # left as found
    assert (r.written, r.listed, r.missing, r.workers, r.device, r.half) == (2, 2, [], 1, "cpu", False)
    assert r.report.ok and r.version == "v2" and r.tokens == 48
    rows = tsv_rows(r.path)
    assert rows[0] == ("a.wav", golden_codes[0, 0].tolist())
    assert len(rows[1][1]) == 24  # fp16-rounded input: a valid token line (values may differ at ties)


# ---------------------------------------------------------------- order, missing, overwrite
def test_order_follows_name2text_and_missing_is_reported(tmp_path: Path, golden_model: Path, env) -> None:
    items = random_items(5)
    names = list(items)
    order = [names[3], names[0], "zz_absent.wav", names[4], names[1], "aa_absent.wav", names[2]]
    items["not_listed.wav"] = torch.randn(1, 768, 30)  # features without a text line: not written
    exp = make_experiment(
        tmp_path / "exp", items, order=order, extra_lines=["broken line without tabs", "x.wav\tonly\tthree"]
    )
    proc = run_cli("semantic", "--data", str(exp), "--model", str(golden_model), env=env, in_process=True)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 5 of 7" in proc.stdout
    assert "missing features for 2: zz_absent.wav, aa_absent.wav" in proc.stdout
    rows = tsv_rows(exp / TSV)
    assert [n for n, _ in rows] == [n for n in order if "absent" not in n]
    for name, ids in rows:
        assert len(ids) == items[name].shape[-1] // 2 and all(0 <= i < 1024 for i in ids)


def test_read_names_rules(tmp_path: Path) -> None:
    (tmp_path / "2-name2text.txt").write_text(
        "b.wav\tp\tNone\tt\n\nbad\tline\na.wav\tp\t[1]\tt\nb.wav\tp\tNone\tagain\n", encoding="utf-8"
    )
    assert read_names(tmp_path) == (["b.wav", "a.wav"], 1, ["b.wav"])
    (tmp_path / "2-name2text.txt").write_text("../evil.wav\tp\tNone\tt\n", encoding="utf-8")
    with pytest.raises(GsvError, match="not a file name"):
        read_names(tmp_path)


def test_existing_tsv_kept_without_overwrite(tmp_path: Path, golden_model: Path, golden_ssl, env) -> None:
    exp = make_experiment(tmp_path / "exp", {"a.wav": golden_ssl})
    old = b"item_name\tsemantic_audio\na.wav\t1 2 3\n"
    (exp / TSV).write_bytes(old)
    proc = run_cli("semantic", "--data", str(exp), "--model", str(golden_model), env=env, in_process=True)
    assert_one_line_error(proc, str(exp / TSV), "--overwrite")
    assert (exp / TSV).read_bytes() == old
    proc = run_cli(
        "semantic", "--data", str(exp), "--model", str(golden_model), "--overwrite", env=env, in_process=True
    )
    assert proc.returncode == 0, proc.stderr
    assert (exp / TSV).read_bytes() != old and tsv_rows(exp / TSV)[0][0] == "a.wav"


# ---------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def workers_2_run(tmp_path_factory: pytest.TempPathFactory, golden_model: Path, golden_ssl, env):
    """16 utterances written by the command in-process, then again by ``--workers 2 --overwrite`` (a real
    process, its own local Ray) run in a private TMPDIR: (the first TSV, the CLI result, the TSV it
    wrote, what it left in that TMPDIR). Read by the tests below: one Ray run for both."""
    import tempfile

    exp = make_experiment(
        tmp_path_factory.mktemp("workers2") / "exp", {"golden.wav": golden_ssl, **random_items(15, seed=1)}
    )
    t = time.perf_counter()
    proc = run_cli("semantic", "--data", str(exp), "--model", str(golden_model), env=env, in_process=True)
    t_local = time.perf_counter() - t
    assert proc.returncode == 0, proc.stderr
    local = (exp / TSV).read_bytes()
    with tempfile.TemporaryDirectory(prefix="gsvsem-", dir="/tmp") as tmpdir:  # short: Ray's socket paths
        t = time.perf_counter()
        proc = run_cli(
            "semantic",
            "--data",
            str(exp),
            "--model",
            str(golden_model),
            "--workers",
            "2",
            "--overwrite",
            env={**env, "TMPDIR": tmpdir},
        )
        t_ray = time.perf_counter() - t
        left = sorted(p.name for p in Path(tmpdir).iterdir())
    print(f"\n16 utterances: in-process {t_local:.1f} s (in the test's process), --workers 2 {t_ray:.1f} s (CLI)")
    return local, proc, (exp / TSV).read_bytes(), left


@pytest.mark.slow
def test_workers_2_byte_identical_to_in_process(workers_2_run) -> None:
    local, proc, ray_tsv, _ = workers_2_run
    assert proc.returncode == 0, proc.stderr
    assert "2 Ray tasks" in proc.stdout and proc.stderr.strip() == ""
    assert ray_tsv == local


@pytest.mark.slow
def test_workers_leave_nothing_in_tmpdir(workers_2_run) -> None:
    """Issue 24.12: ``semantic --workers 2`` left ``$TMPDIR/ray/session_*`` and ``torchinductor_<user>``
    behind; it now runs in a private temp dir removed at the end (as train and tune do)."""
    _, proc, _, left = workers_2_run
    assert proc.returncode == 0, proc.stderr
    assert "2 Ray tasks" in proc.stdout
    assert left == []


@pytest.mark.slow
def test_ray_joins_initialised_cluster_and_reports_bad_features(
    tmp_path: Path, golden_model: Path, golden_ssl, cache_dir: Path, monkeypatch
) -> None:
    """Library in a process that already runs Ray (num_cpus 4): reused, not shut down; errors stay one line."""
    import ray

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    items = random_items(7, seed=2)
    exp = make_experiment(tmp_path / "exp", items)
    want = extract_semantic(exp, golden_model, cache_root=cache_dir, output=tmp_path / "local.tsv")
    started = not ray.is_initialized()
    if started:
        ray.init(
            address="local", num_cpus=4, object_store_memory=256 * 2**20, include_dashboard=False, log_to_driver=False
        )
    try:
        r = extract_semantic(exp, golden_model, workers=3, cache_root=cache_dir)
        assert r.workers == 3 and ray.is_initialized()
        assert r.path.read_bytes() == want.path.read_bytes()
        torch.save(torch.randn(768, 40), exp / "4-cnhubert" / "spk_005.wav.pt")  # wrong shape, in the last chunk
        with pytest.raises(GsvError) as e:
            extract_semantic(exp, golden_model, workers=3, overwrite=True, cache_root=cache_dir)
        msg = str(e.value)
        assert "\n" not in msg and "spk_005.wav.pt" in msg and "[768, 40]" in msg and "Fix:" in msg
        assert r.path.read_bytes() == want.path.read_bytes()  # nothing written on failure
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- v4 LoRA export
def test_v4_lora_without_base_fails(tmp_path: Path, fixtures_dir: Path, golden_ssl, env) -> None:
    exp = make_experiment(tmp_path / "exp", {"a.wav": golden_ssl})
    lora = fixtures_dir / "SoVITS_weights_v4" / "gsvfix_e1_s2_l32.pth"
    proc = run_cli("semantic", "--data", str(exp), "--model", str(lora), env=env, in_process=True)
    assert_one_line_error(proc, str(lora), "--base")
    assert not (exp / TSV).exists()


@pytest.mark.slow
def test_v4_lora_with_base_produces_tokens(tmp_path: Path, fixtures_dir: Path, schema_files, env) -> None:
    items = random_items(3, seed=3)
    exp = make_experiment(tmp_path / "exp", items)
    lora = fixtures_dir / "SoVITS_weights_v4" / "gsvfix_e1_s2_l32.pth"
    base = schema_files.path("sovits-pretrained-g", "v4")  # full size, ~770 MB
    try:
        proc = run_cli(
            "semantic", "--data", str(exp), "--model", str(lora), "--base", str(base), env=env, in_process=True
        )
    finally:
        schema_files.delete("sovits-pretrained-g", "v4")
    assert proc.returncode == 0, proc.stderr
    assert "ready for semantic (sovits v4)" in proc.stdout and "from base" in proc.stdout
    rows = tsv_rows(exp / TSV)
    assert [n for n, _ in rows] == list(items)
    for name, ids in rows:
        assert len(ids) == items[name].shape[-1] // 2 and all(0 <= i < 1024 for i in ids)


# ---------------------------------------------------------------- bad input: exit 2, one line
def test_gpt_file_as_model(tmp_path: Path, fixtures_dir: Path, golden_ssl, env) -> None:
    exp = make_experiment(tmp_path / "exp", {"a.wav": golden_ssl})
    gpt = fixtures_dir / "GPT_weights_v2" / "gsvfix-e1.ckpt"
    proc = run_cli("semantic", "--data", str(exp), "--model", str(gpt), env=env, in_process=True)
    assert_one_line_error(proc, str(gpt), "GPT", "SoVITS")
    assert not (exp / TSV).exists()


def test_data_folder_without_name2text(tmp_path: Path, golden_model: Path, env) -> None:
    (tmp_path / "exp" / "4-cnhubert").mkdir(parents=True)
    proc = run_cli("semantic", "--data", str(tmp_path / "exp"), "--model", str(golden_model), env=env, in_process=True)
    assert_one_line_error(proc, str(tmp_path / "exp"), "2-name2text.txt", "Fix:")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal of --half")
def test_half_on_cpu(tmp_path: Path, golden_model: Path, golden_ssl, env) -> None:
    exp = make_experiment(tmp_path / "exp", {"a.wav": golden_ssl})
    proc = run_cli("semantic", "--data", str(exp), "--model", str(golden_model), "--half", env=env, in_process=True)
    assert_one_line_error(proc, "--half", "CUDA", "drop --half")
    assert not (exp / TSV).exists()


@pytest.mark.parametrize(
    "case",
    ["no_hubert_dir", "no_features_at_all", "bad_feature_file", "not_a_tensor", "too_short", "nan", "data_missing"],
)
def test_bad_input_library(case: str, tmp_path: Path, golden_model: Path, golden_ssl, cache_dir: Path) -> None:
    exp = make_experiment(tmp_path / "exp", {"a.wav": golden_ssl, "b.wav": golden_ssl})
    feats = exp / "4-cnhubert"
    needle = {
        "no_hubert_dir": "4-cnhubert",
        "no_features_at_all": "none of the 2",
        "bad_feature_file": "b.wav.pt",
        "not_a_tensor": "holds a dict",
        "too_short": "too short",
        "nan": "NaN",
        "data_missing": "not found",
    }[case]
    data = exp
    if case == "no_hubert_dir":
        for p in feats.iterdir():
            p.unlink()
        feats.rmdir()
    elif case == "no_features_at_all":
        for p in feats.iterdir():
            p.unlink()
    elif case == "bad_feature_file":
        (feats / "b.wav.pt").write_bytes(b"not a zip")
    elif case == "not_a_tensor":
        torch.save({"x": golden_ssl}, feats / "b.wav.pt")
    elif case == "too_short":
        torch.save(torch.randn(1, 768, 1), feats / "b.wav.pt")
    elif case == "nan":
        torch.save(torch.full((1, 768, 8), float("nan")), feats / "b.wav.pt")
    elif case == "data_missing":
        data = tmp_path / "nope"
    with pytest.raises(GsvError) as e:
        extract_semantic(data, golden_model, cache_root=cache_dir)
    msg = str(e.value)
    assert "\n" not in msg and needle in msg and "Fix:" in msg, msg
    assert not (exp / TSV).exists()


# ---------------------------------------------------------------- issue #24: output path, BOM, the example
def test_output_path_that_is_a_directory_is_named(tmp_path: Path, golden_model: Path, golden_ssl, env) -> None:
    """Before (with --overwrite): the error named the hidden temp file beside it."""
    exp = make_experiment(tmp_path / "exp", {"a.wav": golden_ssl})
    (exp / TSV).mkdir()
    for extra in ((), ("--overwrite",)):
        proc = run_cli("semantic", "--data", str(exp), "--model", str(golden_model), *extra, env=env, in_process=True)
        err = assert_one_line_error(proc, f"{exp / TSV}:", "directory", "--output")
        assert "/." not in err.split(": ")[1]
    assert (exp / TSV).is_dir() and not list((exp / TSV).iterdir())
    out = tmp_path / "elsewhere" / "tokens.tsv"
    proc = run_cli(
        "semantic", "--data", str(exp), "--model", str(golden_model), "--output", str(out), env=env, in_process=True
    )
    assert proc.returncode == 0, proc.stderr
    assert tsv_rows(out)[0][0] == "a.wav" and str(out) in proc.stdout


def test_bom_in_name2text_is_not_part_of_a_name(tmp_path: Path, golden_model: Path, golden_ssl, env) -> None:
    """Before: the first utterance was "missing features" under the name '\\ufeffa.wav'."""
    exp = make_experiment(tmp_path / "exp", {"a.wav": golden_ssl, "b.wav": golden_ssl})
    text = exp / "2-name2text.txt"
    text.write_bytes(b"\xef\xbb\xbf" + text.read_bytes())
    proc = run_cli("semantic", "--data", str(exp), "--model", str(golden_model), env=env, in_process=True)
    assert proc.returncode == 0, proc.stderr
    assert "missing" not in proc.stdout and [n for n, _ in tsv_rows(exp / TSV)] == ["a.wav", "b.wav"]


def test_example_writes_its_own_tsv_not_the_demos() -> None:
    """examples/semantic.yaml, run where docs/guide/cluster.md says, replaced the demo's 6-name2semantic.tsv
    (other tokens)."""
    import yaml

    from tests.conftest import REPO_ROOT

    example = yaml.safe_load((REPO_ROOT / "examples" / "semantic.yaml").read_text())
    out = Path(example.get("output") or Path(example["data"]) / TSV)
    assert out != Path(example["data"]) / TSV and out.name.endswith(".tsv"), example
    assert not str(out).startswith(example["data"]), example  # not inside the demo's experiment folder
