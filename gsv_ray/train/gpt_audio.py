"""``--eval-sovits FILE``: GPT validation heard through a SoVITS decoder (issue #26).

At each validation the GPT's *generated* tokens for a held-out text are decoded to audio as
GPT-SoVITS infers (``get_tts_wav``: ``vq_model.decode(tokens, the text's phones, the reference
clip's spectrogram[, its sv vector], noise_scale=0.5)``), with the paired held-out utterance (the one
that gave the GPT its prompt) as the reference clip and noise keyed by (seed, name, sample). The
audio is scored against the real utterance: ``spk_sim`` with ``--sv-model`` (cosine of the
speaker embeddings) and ``cer`` with ``--asr`` (the Whisper transcript against ``norm_text`` of
``2-name2text.txt``, :func:`~gsv_ray.train.quality.cer`).

The SoVITS file (an export or a base, v1-v2ProPlus, fp16 or fp32) is rebuilt for inference once per
run and kept in eval mode, fp32, on the run's device. v3/v4 are refused: their decoder is a CFM
sampled over 32 steps plus a separate vocoder, far more than a validation should cost.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch

from gsv_ray.audio import AudioFrontend, read_wav_pcm16
from gsv_ray.data.experiment import Experiment, ExperimentOptions, open_experiment, symbol_set_of
from gsv_ray.errors import ConfigError, GsvError
from gsv_ray.models.sv import SpeakerEncoder, spk_sim
from gsv_ray.rebuild import RebuildSpec, build_models, rebuild
from gsv_ray.resources import SV_DIM, VITS_VERSIONS
from gsv_ray.train.asr import Transcriber, check_asr_folder
from gsv_ray.train.config import TrainConfig
from gsv_ray.train.quality import cer
from gsv_ray.train.sovits import decode_tokens

_SV_NOTE = (
    "validation: speaker similarity of the decoded GPT output (val/spk_sim) is not scored: pass --sv-model "
    "pretrained_models/sv/pretrained_eres2netv2w24s4ep4.ckpt (GPT-SoVITS's speaker model) to score it"
)


class Heard(NamedTuple):
    """One held-out utterance's SoVITS side: what decoding and scoring need."""

    phones: torch.Tensor  # [L] the SoVITS phone ids of its text
    spec: torch.Tensor  # [bins, T] its spectrogram (as a reference clip)
    sv_emb: torch.Tensor | None  # [1, 20480] (Pro)
    wav: torch.Tensor  # [N] float32, the real audio
    text: str  # norm_text
    embedding: torch.Tensor | None  # [192] the real audio's speaker embedding (with --sv-model)


def load_decoder(path: str, gpt_symbols: str, device: torch.device):
    """The SoVITS generator of ``path`` for inference (eval, fp32, on ``device``) and its rebuild;
    anything else is one line naming the file and exit status 2."""
    try:
        rebuilt = rebuild(RebuildSpec(init=path, task="infer"))
    except GsvError as e:
        raise ConfigError(f"--eval-sovits: {e}") from None
    if rebuilt.stage != "sovits":
        raise ConfigError(
            "--eval-sovits takes a SoVITS model, and this is a GPT file",
            path=path,
            fix="pass a SoVITS export (SoVITS_weights*/...pth) or base (s2G*.pth)",
        )
    if rebuilt.version not in VITS_VERSIONS:
        raise ConfigError(
            f"--eval-sovits takes v1-v2ProPlus, and this is {rebuilt.version} (a CFM decoder of 32 steps "
            "plus a vocoder per clip: too costly for every validation)",
            path=path,
            fix="pass a v2/v2Pro/v2ProPlus SoVITS export of the same voice, or drop --eval-sovits",
        )
    if symbol_set_of(rebuilt.version) != gpt_symbols:
        raise ConfigError(
            f"--eval-sovits is {rebuilt.version} ({symbol_set_of(rebuilt.version)} phone table) but the "
            f"GPT reads the {gpt_symbols} phone table",
            path=path,
            fix="pass a SoVITS file whose version shares the GPT's phone table (v1 with v1, v2+ with v2+)",
        )
    g = build_models(rebuilt.resolved)["generator"]
    g.load_state_dict(rebuilt.generator, strict=True)
    return g.float().eval().requires_grad_(False).to(device), rebuilt


class GeneratedAudio:
    """Generated tokens -> audio -> ``spk_sim`` / ``cer``; everything loaded once per run (:meth:`load`)."""

    def __init__(
        self,
        g,
        experiment: Experiment,
        frontend: AudioFrontend,
        sampling_rate: int,
        speaker: SpeakerEncoder | None,
        transcriber: Transcriber | None,
    ):
        self.g, self.experiment, self.frontend, self.sampling_rate = g, experiment, frontend, sampling_rate
        self.speaker, self.transcriber = speaker, transcriber
        self._heard: dict[str, Heard | None] = {}  # the held-out set is fixed for the run: read once

    @classmethod
    def load(
        cls, cfg: TrainConfig, experiment: Experiment, device: torch.device
    ) -> tuple[GeneratedAudio | None, tuple]:
        """The scorer for ``cfg.eval_sovits`` (None without it, or with nothing to score) and the notes to
        print. Bad files are one-line errors here, before training starts."""
        if cfg.eval_sovits is None:
            return None, ()
        if cfg.asr:
            check_asr_folder(cfg.asr)  # a wrong folder is one line before anything heavy loads
        g, rebuilt = load_decoder(cfg.eval_sovits, experiment.symbol_set, device)
        settings = rebuilt.resolved.sovits
        speaker = SpeakerEncoder.load(cfg.sv_model).to(device) if cfg.sv_model else None
        transcriber = Transcriber.load(cfg.asr, device) if cfg.asr else None
        sovits_side = open_experiment(experiment.root, "sovits", rebuilt.version, ExperimentOptions(scan_tensors=False))
        notes = () if speaker else (_SV_NOTE,)
        if sovits_side.report.problems:  # what it cannot decode is left out of the scores: say which
            notes += tuple(f"  --eval-sovits data: {line}" for line in sovits_side.report.lines())
        if speaker is None and transcriber is None:
            return None, notes + ("validation: --eval-sovits decodes nothing without --sv-model or --asr to score it",)
        frontend = AudioFrontend.from_config(settings.audio).to(device)
        return cls(g, sovits_side, frontend, settings.audio.sampling_rate, speaker, transcriber), notes

    def heard(self, name: str) -> Heard | None:
        """``name``'s SoVITS side, read once; None for an utterance the SoVITS scan left out (a missing or
        broken 5-wav32k / 7-sv_cn file, upstream's SoVITS duration limits)."""
        if name not in self._heard:
            found = self.experiment.subset([name])
            if not found:
                self._heard[name] = None
                return None
            u = found[0]
            wav = read_wav_pcm16(u.wav_path)
            dev = self.g.ssl_proj.weight.device
            sv = torch.load(u.sv_path, map_location="cpu", weights_only=True).reshape(1, SV_DIM) if u.sv_path else None
            with torch.no_grad():
                spec = self.frontend.spectrogram(wav.to(dev)).squeeze(0)
            emb = self.speaker.embed(wav[0], self.sampling_rate) if self.speaker is not None else None
            self._heard[name] = Heard(
                torch.tensor(u.phone_ids, dtype=torch.long), spec, sv, wav[0].float(), u.norm_text, emb
            )
        return self._heard[name]

    @torch.no_grad()
    def score(self, name: str, reference: str, tokens: list[int], seed: int) -> dict[str, float]:
        """``tokens`` (generated for ``name``'s text) decoded with ``reference`` as the reference clip,
        scored against ``name``'s real audio and text. Non-finite samples count as silence."""
        item, ref = self.heard(name), self.heard(reference)
        if item is None or ref is None:
            return {}  # not decodable: left out of the scores (the --eval-sovits data lines at start name it)
        if tokens:
            codes = torch.tensor(tokens, dtype=torch.long)
            wav = decode_tokens(self.g, codes, item.phones, ref.spec, ref.sv_emb, seed)
            wav = torch.nan_to_num(wav.cpu(), 0.0, 0.0, 0.0)
        else:  # nothing generated: half a second of silence (never the case with a prompt)
            wav = torch.zeros(self.sampling_rate // 2)
        out: dict[str, float] = {}
        if self.speaker is not None:
            out["spk_sim"] = spk_sim(self.speaker.embed(wav, self.sampling_rate), item.embedding)
        if self.transcriber is not None:
            out["cer"] = cer(self.transcriber.transcribe(wav, self.sampling_rate), item.text)
        return out


def utterance_stem(name: str) -> str:
    """The per-utterance metric key part (``utt/<stem>/...``), as the SoVITS validation writes it."""
    return Path(name).stem
