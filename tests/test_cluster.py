"""Issue: run on a real cluster. The cluster file and the RayJob are validated offline, pinned to the
package's own version, the example configs run against the demo data, and the commands README.md and
docs/ show parse."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import yaml

from gsv_ray import __version__
from gsv_ray.cli import build_parser
from tests.conftest import REPO_ROOT

RAY_IMAGE = f"rayproject/ray:{ray.__version__}-py311-gpu"


def test_cluster_yaml_is_valid_for_ray():
    from ray.autoscaler._private.util import prepare_config, validate_config  # private: ray is pinned

    cfg = yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(cfg))
    assert cfg["provider"]["type"] == "aws" and cfg["docker"]["image"] == RAY_IMAGE
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head does not train
    gpu = cfg["available_node_types"]["gpu_worker"]
    assert gpu["node_config"]["InstanceType"].startswith(("g5.", "g6.")) and gpu["min_workers"] < gpu["max_workers"]
    assert f'pip install -q "gsv-ray=={__version__}"' in cfg["setup_commands"]
    assert (
        "GCP" in (REPO_ROOT / "cluster.yaml").read_text()
        and "WANDB_API_KEY" in (REPO_ROOT / "cluster.yaml").read_text()
    )


def test_kuberay_rayjob_manifest():
    job = yaml.safe_load((REPO_ROOT / "examples/kuberay-rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    args = shlex.split(spec["entrypoint"])
    assert args[:2] == ["gsv-ray", "tune"]
    build_parser().parse_args(args[1:])  # the entrypoint is a valid gsv-ray command
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    (group,) = cluster["workerGroupSpecs"]
    containers = [head["template"]["spec"]["containers"][0], group["template"]["spec"]["containers"][0]]
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    for c in containers:
        assert c["image"] == RAY_IMAGE
        assert (
            f"pip install -q 'gsv-ray=={__version__}'" in c["args"][0] and "$KUBERAY_GEN_RAY_START_CMD" in c["args"][0]
        )
    assert job["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"


def _readme_commands() -> list[list[str]]:
    """Every ``gsv-ray ...`` line of a bash block in README.md and the pages under docs/."""
    pages = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    cmds = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("gsv-ray ") and "..." not in line:
                line = re.sub(r"\[[^\]]*\]", "", line)  # optional parts shown as [--flag ...]
                cmds.append(shlex.split(line)[1:])
    return cmds


def test_every_readme_command_parses():
    cmds = _readme_commands()
    assert len(cmds) >= 10 and any(c[0] == "demo" for c in cmds)
    parser = build_parser()
    for args in cmds:
        parser.parse_args(args)  # raises SystemExit on an unknown flag or a bad value


@pytest.fixture(scope="module")
def demo_cwd(tmp_path_factory):
    """A folder where `gsv-ray demo`'s inputs exist as the examples expect them (./gsv-ray-demo)."""
    from gsv_ray.demo import make_demo_inputs

    cwd = tmp_path_factory.mktemp("cwd")
    make_demo_inputs(cwd / "gsv-ray-demo")
    return cwd


# The tune examples are parsed and validated here (a search is run by tests/tune/test_tune.py: the
# demo's and a three-trial ASHA search; GPT training on Ray by tests/distributed); the others run
# as written
EXAMPLES = ["sovits-train.yaml", "semantic.yaml"]


@pytest.mark.parametrize("example", ["sovits-tune.yaml", "gpt-tune.yaml"])
def test_tune_example_is_valid(example, demo_cwd, monkeypatch):
    from gsv_ray.tune.search import load_tune_config

    monkeypatch.chdir(demo_cwd)  # its paths are relative to where the demo ran
    cfg, opts = load_tune_config(REPO_ROOT / "examples" / example)  # as `gsv-ray tune --config` reads it
    assert opts.lr_scale_range[1] <= 1.0  # at or below upstream's LR, as the defaults
    for path in (cfg.init, cfg.data, cfg.base_d):  # the files it names are what the demo makes
        assert path is None or Path(path).exists(), path


@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES)
def test_example_runs_as_written(example, demo_cwd, tmp_path):
    command = {"sovits-train.yaml": "train", "semantic.yaml": "semantic"}.get(example, "tune")
    demo_tsv = (demo_cwd / "gsv-ray-demo/logs/demo/6-name2semantic.tsv").read_bytes()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        RAY_AUTH_MODE="disabled",
        GSV_RAY_CACHE=str(tmp_path / "cache"),
        WANDB_API_KEY="",
        GSV_RAY_SCRATCH=str(tmp_path / "scratch"),
    )
    r = subprocess.run(
        [sys.executable, "-m", "gsv_ray", command, "--config", str(REPO_ROOT / "examples" / example)],
        cwd=demo_cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    if command == "tune":
        name = yaml.safe_load((REPO_ROOT / "examples" / example).read_text())["name"]
        assert (demo_cwd / "gsv-ray-runs" / name / "results.json").is_file()
        assert list((demo_cwd / "gsv-ray-runs" / name / "best").rglob("*.*"))
    elif command == "train":
        assert list((demo_cwd / "gsv-ray-runs/example-sovits-train/SoVITS_weights_v2").glob("*.pth"))
    else:  # its own TSV; the demo's (what GPT training would read) is left as it was
        out = yaml.safe_load((REPO_ROOT / "examples" / example).read_text())["output"]
        assert (demo_cwd / out).read_text().startswith("item_name\t")
        assert demo_tsv == (demo_cwd / "gsv-ray-demo/logs/demo/6-name2semantic.tsv").read_bytes()
