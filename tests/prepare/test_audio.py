"""The audio steps of ``gsv-ray prepare`` against GPT-SoVITS's goldens (goldens ``PREPARE.md`` section 1):
the eight real input clips decoded through PyAV, filtered, mixed, written; measured differences:

* ``decoded32k``, ``wav32k``, ``wav16k``: bitwise equal for every clip (PyAV 18.1 / FFmpeg 8 /
  libswresample 6.3 vs the goldens' ffmpeg 5.1.9 CLI; python-soxr 1.1.0 HQ), so compared exactly.
* HuBERT (2-layer golden model, rule weights, our plain-PyTorch implementation vs transformers 4.57):
  max |diff| / max |golden| <= 5.2e-6 for ``cnhubert`` (all six kept clips) and <= 3.5e-6 for the
  intermediates; PREPARE.md section 4 measured 2.3e-6 between thread counts and 6.3e-6 for float64.
  Tolerance: 1e-5 * max |golden|.
"""

from __future__ import annotations

import shutil
import wave

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gsv_ray.models.hubert import Hubert
from gsv_ray.prepare.audio import (
    Int16Overflow,
    SilentClip,
    TooLoudClip,
    TooShortClip,
    UnreadableClip,
    cnhubert,
    decode_32k,
    prepare_clip,
    write_cnhubert,
    write_wav32k,
)
from tests.support.goldens import PREPARE_CLIPS, SV_CLIPS, load_io, manifest_state_dict

CLIPS = PREPARE_CLIPS
KEPT = SV_CLIPS
HUBERT_REL_TOL = 1e-5  # measured <= 5.2e-6 (module docstring)


@pytest.fixture(scope="session")
def audio_io(goldens_dir):
    return load_io(goldens_dir / "prepare_audio.io.safetensors")


@pytest.fixture(scope="session")
def inputs(goldens_dir):
    return goldens_dir / "prepare_inputs"


@pytest.fixture(scope="session")
def hubert_sd(goldens_dir):
    return manifest_state_dict(goldens_dir / "hubert_small.weights.json")


@pytest.fixture(scope="session")
def hubert(goldens_dir, hubert_sd, tmp_path_factory):
    """The golden 2-layer HuBERT as a user's Hugging Face folder (config.json + model.safetensors)."""
    folder = tmp_path_factory.mktemp("hubert_small")
    shutil.copy(goldens_dir / "hubert_small.config.json", folder / "config.json")
    save_file(hubert_sd, str(folder / "model.safetensors"))
    return Hubert.from_folder(folder)


def _close(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    assert tuple(got.shape) == tuple(want.shape), name
    err = (got.detach() - want).abs().max().item()
    assert err <= HUBERT_REL_TOL * want.abs().max().item(), f"{name}: max |diff| {err:.3g}"


@pytest.mark.parametrize("clip", CLIPS)
def test_decode_32k_equals_upstream_ffmpeg(clip, inputs, audio_io):
    got = decode_32k(inputs / clip)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, audio_io[f"out.{clip}.decoded32k"].reshape(-1).numpy())


@pytest.mark.parametrize("clip", KEPT)
def test_wav32k_and_wav16k_equal_upstream(clip, inputs, audio_io):
    got = prepare_clip(inputs / clip)
    np.testing.assert_array_equal(got.wav32k, audio_io[f"out.{clip}.wav32k"].reshape(-1).numpy())
    np.testing.assert_array_equal(got.wav16k, audio_io[f"out.{clip}.wav16k"].reshape(-1).numpy())
    assert len(got.wav16k) == -(-len(got.wav32k) // 2)
    assert got.out_of_range == (44 if clip == "hot1p5_f32.wav" else 0)


def test_too_loud_clip_is_dropped_and_named(inputs):
    with pytest.raises(TooLoudClip, match=r"peak3_f32\.wav: peak 3 above 2\.2") as e:
        prepare_clip(inputs / "peak3_f32.wav")
    assert e.value.reason == "too_loud" and e.value.exit_code == 2


def test_silent_clip_is_a_named_error_not_nan(inputs):
    with pytest.raises(SilentClip, match=r"silence_0p5s\.wav: all samples are zero") as e:
        prepare_clip(inputs / "silence_0p5s.wav")
    assert e.value.reason == "silent"


def test_int16_overflow_wraps_like_upstream_or_clips_or_refuses(inputs, audio_io):
    """hot1p5: 44 samples beyond int16. Default: upstream's x86 wrap (the golden); or saturate; or refuse."""
    want = audio_io["out.hot1p5_f32.wav.wav32k"].reshape(-1).numpy()
    wrapped = prepare_clip(inputs / "hot1p5_f32.wav")
    clipped = prepare_clip(inputs / "hot1p5_f32.wav", overflow="clip")
    differ = wrapped.wav32k != clipped.wav32k
    assert differ.sum() == 44 and np.array_equal(wrapped.wav32k, want)
    assert set(np.abs(clipped.wav32k[differ].astype(np.int32))) <= {32767, 32768}
    with pytest.raises(Int16Overflow, match=r"hot1p5_f32\.wav: 44 samples beyond 16-bit range"):
        prepare_clip(inputs / "hot1p5_f32.wav", overflow="error")


def test_unreadable_and_too_short_clips_are_named(tmp_path, hubert):
    bad = tmp_path / "notaudio.wav"
    bad.write_bytes(b"this is not a recording")
    with pytest.raises(UnreadableClip, match=r"notaudio\.wav: cannot decode audio"):
        decode_32k(bad)
    with pytest.raises(UnreadableClip, match=r"missing\.wav"):
        decode_32k(tmp_path / "missing.wav")
    with pytest.raises(TooShortClip, match=r"tiny\.wav: 0\.025 s is too short"):
        cnhubert(hubert, np.ones(399, np.float32), path="tiny.wav")


def test_wav32k_file_is_upstreams_wav(tmp_path, inputs, audio_io):
    got = prepare_clip(inputs / "tones_32k.flac")
    out = write_wav32k(tmp_path / "5-wav32k" / "tones_32k.flac", got.wav32k)
    data = out.read_bytes()
    assert len(data) == 44 + 2 * len(got.wav32k)  # scipy's 44-byte PCM header
    with wave.open(str(out)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 32000)
    assert np.array_equal(np.frombuffer(data[44:], "<i2"), audio_io["out.tones_32k.flac.wav32k"].reshape(-1).numpy())
    with pytest.raises(Exception, match="already exists"):
        write_wav32k(out, got.wav32k)


def test_hubert_intermediates_match_goldens(hubert, audio_io):
    inter: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        hubert(audio_io["out.arctic_a0007.wav.wav16k"].reshape(1, -1), intermediates=inter)
    for key in ("conv_features", "feature_projection", "pos_conv", "hidden_states.0", "hidden_states.1"):
        _close(key, inter[key], audio_io[f"out.arctic_a0007.wav.hubert.{key}"])


@pytest.mark.parametrize("clip", KEPT)
def test_cnhubert_matches_goldens(clip, hubert, audio_io):
    """From the goldens' wav16k (equal to ours, tested above) to ``4-cnhubert`` [1, 768, T]."""
    _close(clip, cnhubert(hubert, audio_io[f"out.{clip}.wav16k"].reshape(-1).numpy()), audio_io[f"out.{clip}.cnhubert"])


def test_cnhubert_pt_is_upstreams_format_written_atomically(tmp_path, inputs, hubert, audio_io):
    clip = "short_0p3s_48k.wav"
    feats = cnhubert(hubert, prepare_clip(inputs / clip).wav16k)
    out = write_cnhubert(tmp_path / "4-cnhubert" / f"{clip}.pt", feats)
    back = torch.load(out, map_location="cpu", weights_only=True)
    assert back.dtype == torch.float32 and tuple(back.shape) == (1, 768, 14) and not back.requires_grad
    _close(clip, back, audio_io[f"out.{clip}.cnhubert"])
    assert sorted(p.name for p in out.parent.iterdir()) == [f"{clip}.pt"]  # no temporary left
    with pytest.raises(Exception, match="already exists"):
        write_cnhubert(out, feats)


def test_hubert_reads_pytorch_bin_with_old_weight_norm_keys(tmp_path, goldens_dir, hubert_sd, hubert, audio_io):
    """Older checkpoints: ``pytorch_model.bin`` (read with weights_only), ``weight_g``/``weight_v``, a
    ``hubert.`` prefix; same numbers as the safetensors folder."""
    old = {
        "encoder.pos_conv_embed.conv.parametrizations.weight.original0": "encoder.pos_conv_embed.conv.weight_g",
        "encoder.pos_conv_embed.conv.parametrizations.weight.original1": "encoder.pos_conv_embed.conv.weight_v",
    }
    torch.save({"hubert." + old.get(k, k): v for k, v in hubert_sd.items()}, tmp_path / "pytorch_model.bin")
    shutil.copy(goldens_dir / "hubert_small.config.json", tmp_path / "config.json")
    wav = audio_io["out.short_0p3s_48k.wav.wav16k"].reshape(-1).numpy()
    assert torch.equal(cnhubert(Hubert.from_folder(tmp_path), wav), cnhubert(hubert, wav))
