"""A tiny random-weight faster-whisper model folder, written offline (no download, no transformers).

``make_tiny_whisper(folder)`` writes what faster-whisper loads from a converted model folder:
``model.bin`` + ``config.json`` + ``vocabulary.json`` through CTranslate2's own ``WhisperSpec`` (1
encoder and 1 decoder layer of width 16, 80 mel bands, random weights from a fixed seed) and a
``tokenizer.json`` built with the ``tokenizers`` library: byte-level BPE over the 256 byte symbols
(no merges), Whisper's special tokens after them, then the timestamp tokens. Ours, not OpenAI's
(nothing copied, no licence to carry); with a vocabulary under 51865 tokens CTranslate2 treats the
model as English-only, so no language tokens are needed. It transcribes audio into arbitrary text,
deterministically: enough to run ``--asr`` end to end and get a finite CER.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPECIALS = (
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
)
TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|>
WIDTH, FFN, MELS = 16, 32, 80


def _vocabulary() -> list[str]:
    from tokenizers.pre_tokenizers import ByteLevel

    byte_symbols = sorted(ByteLevel.alphabet())  # the 256 printable stand-ins of the bytes
    return [*byte_symbols, *SPECIALS, *(f"<|{i * 0.02:.2f}|>" for i in range(TIMESTAMPS))]


def _shape(name: str, vocab: int) -> tuple[int, ...]:
    if name.endswith(("gamma", "beta")):
        return (WIDTH,)
    if name == "encoder/conv1/weight":
        return (WIDTH, MELS, 3)
    if name == "encoder/conv2/weight":
        return (WIDTH, WIDTH, 3)
    if name in ("decoder/embeddings/weight", "decoder/projection/weight"):
        return (vocab, WIDTH)
    if name.endswith("ffn/linear_0/weight"):
        return (FFN, WIDTH)
    if name.endswith("ffn/linear_1/weight"):
        return (WIDTH, FFN)
    if name.endswith("self_attention/linear_0/weight"):
        return (3 * WIDTH, WIDTH)  # fused q, k, v
    if name.endswith("attention/linear_1/weight") and "self_attention" not in name:
        return (2 * WIDTH, WIDTH)  # cross-attention: fused k, v
    return (WIDTH, WIDTH)


def make_tiny_whisper(folder: Path, seed: int = 0) -> Path:
    """Write the model folder (created) and return it."""
    from ctranslate2.specs import whisper_spec
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    tokens = _vocabulary()
    spec = whisper_spec.WhisperSpec(1, 2, 1, 2)
    rng = np.random.default_rng(seed)

    def fill(layer, name, value):
        if value is None:
            shape = _shape(name, len(tokens))
            init = np.ones(shape) if name.endswith("gamma") else rng.normal(0.0, 0.5, shape)
            setattr(layer, name.rsplit("/", 1)[-1], init.astype(np.float32))

    spec._visit(fill)  # CTranslate2's own walk over the variables the spec declares
    spec.encoder.position_encodings.encodings = rng.normal(0.0, 0.5, (1500, WIDTH)).astype(np.float32)  # 30 s
    spec.decoder.position_encodings.encodings = rng.normal(0.0, 0.5, (448, WIDTH)).astype(np.float32)
    spec.register_vocabulary(tokens)
    spec.config.suppress_ids = []
    spec.config.suppress_ids_begin = []
    spec.config.lang_ids = []
    spec.config.alignment_heads = [(0, 0), (0, 1)]
    spec.validate()
    spec.optimize(quantization="float32")
    spec.save(str(folder))

    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens[:256])}, merges=[])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(tokens[256:]))
    assert tok.token_to_id("<|notimestamps|>") == tokens.index("<|notimestamps|>")
    tok.save(str(folder / "tokenizer.json"))
    return folder
