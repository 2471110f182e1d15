"""``--asr DIR``: a faster-whisper (CTranslate2 Whisper) model the user already has, as a transcriber.

The folder is what faster-whisper's converter writes (and GPT-SoVITS's ASR tool downloads, e.g.
``tools/asr/models/faster-whisper-large-v3``): ``model.bin``, ``config.json``, the vocabulary and
``tokenizer.json``. Nothing reaches the network: faster-whisper fetches a tokenizer from the Hugging
Face hub when the folder has no ``tokenizer.json`` (``WhisperModel.__init__``:
``tokenizers.Tokenizer.from_pretrained``, which ``local_files_only`` does not cover), so such a
folder is refused in one line instead. ``faster-whisper`` is the optional extra ``asr``, imported
only when ``--asr`` is given.

Transcription is deterministic: greedy-equivalent beam search at temperature 0 only (no sampling
fallback), no previous-text conditioning, no timestamps, no voice-activity filter; the language is
Whisper's own detection (multilingual models) per clip.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gsv_ray.errors import ConfigError, GsvError, first_line
from gsv_ray.fbank import SV_SAMPLE_RATE, resample_32k_to_16k

#: What a CTranslate2 Whisper folder must hold for an offline faster-whisper (any one vocabulary file).
MODEL_FILES = ("model.bin", "config.json", "tokenizer.json")
VOCABULARY_FILES = ("vocabulary.json", "vocabulary.txt")
ASR_SAMPLE_RATE = SV_SAMPLE_RATE  # Whisper hears 16 kHz
_FIX = (
    "pass a faster-whisper model folder (model.bin, config.json, vocabulary.json, tokenizer.json), e.g. "
    "GPT-SoVITS's tools/asr/models/faster-whisper-large-v3, or drop --asr"
)


def check_asr_folder(path: str | Path) -> Path:
    """``path`` as a usable offline faster-whisper folder, or a one-line :class:`ConfigError` naming it."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError("--asr: not a folder", path=folder, fix=_FIX)
    missing = [f for f in MODEL_FILES if not (folder / f).is_file()]
    if not any((folder / f).is_file() for f in VOCABULARY_FILES):
        missing.append("vocabulary.json")
    if missing == ["tokenizer.json"]:
        raise ConfigError(
            "--asr: the model folder has no tokenizer.json (faster-whisper would download one from the "
            "Hugging Face hub)",
            path=folder,
            fix="copy the model's tokenizer.json into it (faster-whisper model folders ship one)",
        )
    if missing:
        raise ConfigError(
            f"--asr: not a CTranslate2 Whisper model folder (no {', '.join(missing)})", path=folder, fix=_FIX
        )
    return folder


def to_16k(wav: torch.Tensor, sampling_rate: int) -> np.ndarray:
    """A mono waveform ``[N]`` at 16 or 32 kHz as the float32 16 kHz array Whisper takes."""
    wav = wav.reshape(-1).float().cpu()
    if sampling_rate == 32000:
        wav = resample_32k_to_16k(wav)
    elif sampling_rate != ASR_SAMPLE_RATE:
        raise ValueError(f"ASR input at {sampling_rate} Hz: 16 or 32 kHz expected")
    return wav.clamp(-1.0, 1.0).numpy()


class Transcriber:
    """A loaded faster-whisper model: :meth:`transcribe` turns a waveform into its text."""

    def __init__(self, model, folder: Path):
        self.model, self.folder = model, folder

    @classmethod
    def load(cls, path: str | Path, device: torch.device) -> Transcriber:
        """Load once per run on ``device`` (CUDA or CPU); a missing extra or an unloadable folder is one line."""
        folder = check_asr_folder(path)
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise ConfigError(
                "--asr needs faster-whisper, which is not installed",
                path=folder,
                fix="pip install 'gsv-ray[asr]' (or pip install faster-whisper)",
            ) from None
        cuda = device.type == "cuda"
        try:
            model = WhisperModel(
                str(folder),
                device="cuda" if cuda else "cpu",
                device_index=(device.index or 0) if cuda else 0,
                local_files_only=True,
            )
        except (
            RuntimeError,
            ValueError,
            OSError,
            IndexError,
            KeyError,
        ) as e:  # ctranslate2/tokenizers: unloadable files
            raise GsvError(
                f"--asr: faster-whisper cannot load this model ({first_line(e)})", path=folder, fix=_FIX
            ) from None
        return cls(model, folder)

    def transcribe(self, wav: torch.Tensor, sampling_rate: int) -> str:
        """The text Whisper hears in ``wav`` (``[N]``, 16 or 32 kHz), segments joined, stripped."""
        segments, _ = self.model.transcribe(
            to_16k(wav, sampling_rate),
            beam_size=5,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
        )
        return "".join(s.text for s in segments).strip()
