"""Read GPT-SoVITS numeric goldens (see ``goldens/README.md`` in the reference folder).

The SoVITS golden weights are not stored; they follow the rule ``gsv-golden-splitmix64-v1``
(SplitMix64 stream seeded by SHA-256 of the key). This module regenerates them and checks each
tensor's SHA-256 against the manifest, so a wrong regeneration fails loudly instead of making
every numeric comparison fail mysteriously.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


#: Elements per block of the rule's stream: small enough that the uint64/float64 scratch stays in cache.
_RULE_BLOCK = 1 << 18


def rule_tensor(key: str, shape: list[int], offset: float, scale: float) -> np.ndarray:
    """The rule's float32 tensor: ``offset + scale * (u - 2**23) / 2**23`` (float64, then rounded) where
    ``u`` is the top 24 bits of SplitMix64 output ``i = 1..n`` seeded from the key's SHA-256.

    Computed in place block by block: whole-array temporaries (seven 8-byte arrays per tensor) made
    the 53.5 M-parameter ERes2NetV2 take 40+ s on a busy 2-core machine; blocks give the same bits
    (every step is elementwise) in ~5 s, and :func:`manifest_state_dict` still checks each SHA-256."""
    n = int(np.prod(shape)) if shape else 1
    seed = np.uint64(int.from_bytes(hashlib.sha256(("gsv-golden:" + key).encode("utf-8")).digest()[:8], "little"))
    out = np.empty(n, dtype=np.float32)
    z, t = np.empty(min(n, _RULE_BLOCK), dtype=np.uint64), np.empty(min(n, _RULE_BLOCK), dtype=np.uint64)
    w = np.empty(min(n, _RULE_BLOCK), dtype=np.float64)
    with np.errstate(over="ignore"):
        for start in range(0, n, _RULE_BLOCK):
            m = min(_RULE_BLOCK, n - start)
            zb, tb, wb = z[:m], t[:m], w[:m]
            zb[:] = np.arange(start + 1, start + m + 1, dtype=np.uint64)
            np.multiply(zb, _GAMMA, out=zb)
            np.add(zb, seed, out=zb)
            for shift, mult in ((30, _M1), (27, _M2), (31, None)):
                np.right_shift(zb, np.uint64(shift), out=tb)
                np.bitwise_xor(zb, tb, out=zb)
                if mult is not None:
                    np.multiply(zb, mult, out=zb)
            np.right_shift(zb, np.uint64(40), out=zb)
            wb[:] = zb  # < 2**24: exact in float64, as the int64 -> float64 of the whole-array form
            wb -= 2**23
            wb /= 2**23
            wb *= scale
            wb += offset
            out[start : start + m] = wb
    return out.reshape(shape)


def manifest_state_dict(manifest_path: Path, *, verify: bool = True) -> dict[str, torch.Tensor]:
    """State dict (in manifest = upstream state_dict order) regenerated from a ``*.weights.json``."""
    manifest = json.loads(Path(manifest_path).read_text())
    entries = manifest["tensors"] if isinstance(manifest, dict) and "tensors" in manifest else manifest
    out: dict[str, torch.Tensor] = {}
    for e in entries:
        arr = rule_tensor(e["key"], e["shape"], e["offset"], e["scale"])
        if verify:
            got = hashlib.sha256(np.ascontiguousarray(arr, dtype="<f4").tobytes()).hexdigest()
            assert got == e["sha256_fp32_le"], f"golden rule mismatch for {e['key']}"
        out[e["key"]] = torch.from_numpy(arr)
    return out


def load_io(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_close_golden(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    """Goldens' tolerance: floats within 1e-4 * max(1, max|want|); integers exactly."""
    assert tuple(got.shape) == tuple(want.shape), f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if not want.is_floating_point():
        assert torch.equal(got.to(want.dtype), want), f"{name}: integer values differ"
        return
    got = got.detach().to(torch.float64)
    want = want.to(torch.float64)
    tol = 1e-4 * max(1.0, want.abs().max().item() if want.numel() else 1.0)
    err = (got - want).abs().max().item() if want.numel() else 0.0
    assert err <= tol, f"{name}: max abs error {err:.3g} > tolerance {tol:.3g}"


def v3_state_dict(
    goldens_dir: Path, version: str, *, lora: bool = False, verify: bool = True
) -> dict[str, torch.Tensor]:
    """The v3/v4 golden generator's state dict (section 9.2), in upstream's state_dict order: the plain
    manifest's rule tensors plus its fixed tensor (``rotary_embed.inv_freq``, real values); with
    ``lora``, the LoRA r=32 model's keys (plain tensors renamed by ``base_key_map`` + the LoRA rule)."""
    plain_manifest = json.loads((goldens_dir / f"sovits_G_{version}.weights.json").read_text())
    plain = manifest_state_dict(goldens_dir / f"sovits_G_{version}.weights.json", verify=verify)
    for e in plain_manifest.get("fixed_tensors", []):
        plain[e["key"]] = torch.tensor(e["values"], dtype=torch.float32).reshape(e["shape"])
    order = [e["key"] for e in plain_manifest["tensors"]]
    for e in plain_manifest.get("fixed_tensors", []):
        order.insert(e["index_in_state_dict"], e["key"])
    if not lora:
        return {k: plain[k] for k in order}
    m = json.loads((goldens_dir / f"sovits_G_{version}_lora32.weights.json").read_text())
    adapters = manifest_state_dict(goldens_dir / f"sovits_G_{version}_lora32.weights.json", verify=verify)
    base = dict(m["base_key_map"])
    return {k: adapters[k] if k in adapters else plain[base[k]] for k in m["state_dict_order"]}


def eres2netv2_state_dict(goldens_dir: Path, *, verify: bool = True) -> dict[str, torch.Tensor]:
    """The speaker-verification golden model's state dict (PREPARE.md section 3), in upstream's
    state_dict order: the manifest's rule tensors plus its ``fixed_tensors`` (the int64
    ``num_batches_tracked`` zeros a strict load needs) at their ``index_in_state_dict``."""
    path = goldens_dir / "eres2netv2.weights.json"
    manifest = json.loads(path.read_text())
    sd = manifest_state_dict(path, verify=verify)
    order = [e["key"] for e in manifest["tensors"]]
    for e in sorted(manifest["fixed_tensors"], key=lambda e: e["index_in_state_dict"]):
        sd[e["key"]] = torch.tensor(e["values"], dtype=getattr(torch, e["dtype"])).reshape(e["shape"])
        order.insert(e["index_in_state_dict"], e["key"])
    assert len(order) == manifest["num_keys"], "manifest key count"
    return {k: sd[k] for k in order}


#: The eight input clips of the preparation goldens (``prepare_inputs/``, PREPARE.md section 0): the six
#: GPT-SoVITS kept, then the two it dropped (too loud, silent).
PREPARE_CLIPS = (
    "arctic_a0007.wav",
    "arctic_a0007_16k.mp3",
    "tones_44k1_stereo.wav",
    "tones_32k.flac",
    "hot1p5_f32.wav",
    "short_0p3s_48k.wav",
    "peak3_f32.wav",
    "silence_0p5s.wav",
)
#: The six clips GPT-SoVITS kept (its HuBERT and SV steps), as named in ``prepare_audio.*``/``prepare_sv.*``.
SV_CLIPS = PREPARE_CLIPS[:6]
