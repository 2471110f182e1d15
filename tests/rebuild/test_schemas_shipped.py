"""The model key/shape schemas shipped in ``gsv_ray/resources/schemas``: current with the model
code, found for every full-size real file without building any model, and only unusual configs
fall back to the meta build + per-machine cache."""

from __future__ import annotations

import dataclasses
import fnmatch
from collections import Counter
from pathlib import Path

import pytest

from gsv_ray.rebuild import rebuild
from gsv_ray.rebuild import schemagen as G
from gsv_ray.rebuild import schemas as S
from gsv_ray.rebuild import targets as T

REPO = Path(__file__).resolve().parents[2]
VITS = ["v1", "v2", "v2Pro", "v2ProPlus"]
MODELS = ("SoVITSGenerator", "MultiPeriodDiscriminator", "Text2SemanticDecoder", "SemanticExtractor")


def _boom():
    raise AssertionError("a shipped schema must not build the model")


@pytest.mark.slow
def test_shipped_schemas_are_current():
    """Every shipped file is rebuilt from the model code now and must be byte-identical; none is
    missing or extra. On failure: ``python -m gsv_ray.rebuild.schemagen`` and commit the result."""
    assert G.check() == []


def test_shipped_schemas_cover_every_default_target():
    targets = G.shipped_targets()
    assert Counter(t.name for t in targets) == {"generator": 5, "discriminator": 4, "gpt": 2}
    files = {p.name for p in G.default_dir().glob("*.json")}
    assert files == {S.shipped_name(t.name, t.fingerprint) for t in targets}


@pytest.mark.slow
def test_shipped_lookup_builds_nothing_and_equals_meta_build(tmp_path):
    for t in G.shipped_targets():
        want = t.meta_shapes()
        got = dataclasses.replace(t, build=_boom).shapes(tmp_path)
        assert list(got.items()) == list(want.items()), t.fingerprint  # same keys, order and shapes
        assert dataclasses.replace(t, build=_boom).shapes(None) == want  # no cache needed either
    assert not (tmp_path / "schemas").exists()  # nothing had to be remembered


def test_shipped_digest_does_not_depend_on_package_version(monkeypatch):
    t = T.discriminator_target("v2", 1, 0)
    monkeypatch.setattr(T, "__version__", "999.0.0")
    assert dataclasses.replace(t, build=_boom).shapes(None) is not None


def test_tampered_fingerprint_is_not_trusted(monkeypatch):
    t = T.discriminator_target("v2", 1, 0)
    text = S.render(t.name, "something else", t.meta_shapes())

    class Fake:
        def joinpath(self, _):
            return self

        def read_text(self, encoding=None):
            return text

    monkeypatch.setattr(S.resources, "files", lambda _: Fake())
    assert S.shipped_shapes(t.name, t.fingerprint) is None


def test_unusual_config_falls_back_to_meta_build_then_cache(tmp_path):
    t = T.discriminator_target("v2", 4, 0)  # a narrowed D: nothing ships for it
    assert S.shipped_shapes(t.name, t.fingerprint) is None
    calls = []

    def build():
        calls.append(1)
        return t.build()

    first = dataclasses.replace(t, build=build).shapes(tmp_path)
    assert calls == [1] and len(list((tmp_path / "schemas").glob("discriminator-*.json"))) == 1
    second = dataclasses.replace(t, build=_boom).shapes(tmp_path)  # now from the cache
    assert list(first.items()) == list(second.items())


def test_package_data_includes_shipped_schemas():
    import tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gsv_ray"]
    for p in G.default_dir().glob("*.json"):
        rel = p.relative_to(REPO / "gsv_ray").as_posix()
        assert any(fnmatch.fnmatch(rel, pat) for pat in data), rel


# -- full-size real files: no model is built when the cache is empty -----------------------------
@pytest.fixture
def no_model_builds(monkeypatch):
    """Counts every model our rebuild targets construct (on meta or not); the meta fallback fails."""
    built: Counter = Counter()
    for name in MODELS:
        cls = getattr(T, name)

        def spy(*a, _cls=cls, **kw):
            built[_cls.__name__] += 1
            return _cls(*a, **kw)

        monkeypatch.setattr(T, name, spy)

    def no_meta(self):
        raise AssertionError(f"meta build for {self.fingerprint}: no shipped schema for a full-size file")

    monkeypatch.setattr(T.Target, "meta_shapes", no_meta)
    return built


@pytest.mark.slow
@pytest.mark.parametrize("version", VITS)
def test_full_size_export_with_bases_builds_no_model(version, schema_files, no_model_builds, tmp_path):
    export = schema_files.path("sovits-export", version)
    g = schema_files.path("sovits-pretrained-g", version)
    d = schema_files.path("sovits-pretrained-d", version)
    cache = tmp_path / "cache"  # empty: a first run on this machine
    r = rebuild(export, base_g=g, base_d=d, cache_root=cache)
    assert r.report.verdict == "ok" and set(r.weights) == {"generator", "discriminator"}
    r = rebuild(export, task="semantic", cache_root=cache)  # semantic target + the full G it compares to
    assert r.report.verdict == "ok" and r.report.harmless["generator"]
    assert no_model_builds == Counter()
    assert not cache.exists()  # no schema had to be computed and remembered


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "version"), [("gpt-export", "v1"), ("gpt-export", "v2"), ("gpt-lightning", "v2")])
def test_full_size_gpt_builds_no_model(kind, version, schema_files, no_model_builds, tmp_path):
    r = rebuild(schema_files.path(kind, version), cache_root=tmp_path / "cache")
    assert r.report.verdict == "ok" and set(r.weights) == {"gpt"}
    assert no_model_builds == Counter()
    assert not (tmp_path / "cache").exists()
