"""Each option is declared once, on its config dataclass: its flag, YAML key, type, range, default and
help all come from there (gsv_ray.options). These tests hold the commands to that."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest
import yaml

from gsv_ray.cli import build_parser
from gsv_ray.errors import ConfigError
from gsv_ray.options import options
from tests.conftest import run_cli


def _flags(command: str) -> dict[str, argparse.Action]:
    (sub,) = [a for a in build_parser(command)._actions if isinstance(a, argparse._SubParsersAction)]
    return {a.dest: a for a in sub.choices[command]._actions if a.dest != "help"}


def _declared():
    from gsv_ray.demo import DemoOptions
    from gsv_ray.distributed.options import RayOptions
    from gsv_ray.semantic import SemanticOptions
    from gsv_ray.train.config import TrainConfig
    from gsv_ray.train.verify import VerifyOptions
    from gsv_ray.tune.search import NOT_TUNE_OPTIONS, TuneOptions

    return {
        "train": [(TrainConfig, ()), (RayOptions, ())],
        "tune": [(TrainConfig, NOT_TUNE_OPTIONS), (TuneOptions, ())],
        "semantic": [(SemanticOptions, ())],
        "verify": [(VerifyOptions, ())],
        "demo": [(DemoOptions, ())],
    }


@pytest.mark.parametrize("command", ["train", "tune", "semantic", "verify", "demo"])
def test_every_declared_option_is_a_flag_with_its_default_in_the_help(command):
    flags = _flags(command)
    for cls, left_out in _declared()[command]:
        for f, opt in options(cls):
            if f.name in left_out:  # searched per trial, or tune's own option of that name
                continue
            action = flags[f.name]  # the flag writes the field of the same name
            assert action.default is None or action.required, f"{f.name}: a flag default would win over YAML"
            assert action.help, f.name
            reworded = not action.help.startswith(opt.help[:20].replace("%", "%%"))  # for this command
            default = f.default
            if (
                not reworded
                and opt.show_default
                and default not in (None, dataclasses.MISSING)
                and default is not False
                and "default" not in opt.help
            ):
                assert "(default " in action.help, f.name
            if opt.choices:
                assert list(action.choices) == list(opt.choices)


def test_flag_and_yaml_values_are_checked_alike(tmp_path, fixtures_dir):
    """The same bad value, given as a flag or in the YAML file: the same one-line error, exit 2."""
    init = str(fixtures_dir / "GPT_weights_v2/gsvfix-e1.ckpt")
    common = ["--init", init, "--data", str(tmp_path), "-o", str(tmp_path / "run"), "--max-steps", "2"]
    by_flag = run_cli("train", *common, "--warmup-start", "2", in_process=True)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"warmup_start": 2}))
    by_yaml = run_cli("train", *common, "--config", str(tmp_path / "run.yaml"), in_process=True)
    for r in (by_flag, by_yaml):
        assert r.returncode == 2, r.stderr
        assert re.fullmatch(r"gsv-ray: error: --warmup-start must be in \[0, 1\], got 2(\.0)?\.", r.stderr.strip()), (
            r.stderr
        )
        assert not (tmp_path / "run").exists()


def test_ray_options_come_from_yaml_too_and_only_apply_with_workers(tmp_path):
    from gsv_ray.distributed.options import load_run_config

    base = {"init": "old.pth", "data": str(tmp_path), "output_dir": str(tmp_path / "o"), "max_steps": 2}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({**base, "workers": 2, "placement_strategy": "SPREAD"}))
    cfg, ray = load_run_config(tmp_path / "run.yaml")
    assert ray.workers == 2 and ray.placement_strategy == "SPREAD" and cfg.max_steps == 2
    cfg, ray = load_run_config(tmp_path / "run.yaml", ray={"workers": 3})  # flags win
    assert ray.workers == 3
    with pytest.raises(ConfigError, match="--storage only apply with --workers"):
        load_run_config(None, train=base, ray={"storage": "s3://b/p"})
    with pytest.raises(ConfigError, match="takes no folder"):
        load_run_config(None, train={**base, "resume": "some/dir"}, ray={"workers": 2})
    _, ray = load_run_config(None, train={**base, "resume": "latest"}, ray={"workers": 2})
    assert ray.resume


def test_length_is_said_once(tmp_path):
    from gsv_ray.train.config import load_config

    with pytest.raises(ConfigError, match="both say how long"):
        load_config(None, init="a", data=str(tmp_path), output_dir=str(tmp_path), max_steps=2, epochs=1)


def test_yaml_keys_are_the_fields_and_command_line_only_options_are_refused(tmp_path):
    from gsv_ray.tune.search import load_tune_config

    (tmp_path / "t.yaml").write_text(
        yaml.safe_dump(
            {"init": "a", "data": str(tmp_path), "max-steps": 8, "num_samples": 2, "lr_scale_range": [0.1, 0.5]}
        )
    )
    cfg, opts = load_tune_config(tmp_path / "t.yaml")
    assert cfg.max_steps == 8 and opts.num_samples == 2 and opts.lr_scale_range == (0.1, 0.5)
    assert cfg.output_dir.endswith("gsv-ray-runs/tune")
    for key in ("resume", "lr_scale", "bogus"):  # a flag only / searched per trial / unknown
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"init": "a", "max_steps": 8, key: 1}))
        with pytest.raises(ConfigError, match=f"unknown option '{key}'"):
            load_tune_config(tmp_path / "bad.yaml")
