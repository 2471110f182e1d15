"""docs/guide/library.md, "Speaker embeddings": v2Pro's speaker-verification model (a file of upstream's
format, made here with random weights)."""

import torch
from _setup import workdir

from gsv_ray.models.sv.eres2netv2 import ERes2NetV2

workdir()
torch.manual_seed(0)
ckpt = "GPT_SoVITS/pretrained_models/sv/pretrained_eres2netv2w24s4ep4.ckpt"
__import__("os").makedirs(ckpt.rsplit("/", 1)[0])
torch.save(ERes2NetV2().state_dict(), ckpt)  # upstream's file is a plain state_dict
wav = torch.rand(16000) * 2 - 1  # 0.5 s at 32 kHz
other = torch.rand(8000) * 2 - 1

# __doc_start__
from gsv_ray.models.sv import SpeakerEncoder, spk_sim

enc = SpeakerEncoder.load("GPT_SoVITS/pretrained_models/sv/pretrained_eres2netv2w24s4ep4.ckpt")
e = enc.embed(wav, 32000)  # [192]: the model's plain forward (mono, 32 or 16 kHz, float in [-1, 1])
sv = enc.sv_vector(wav, 32000)  # [20480]: what v2Pro's data preparation stores in 7-sv_cn/<name>.pt
spk_sim(e, enc.embed(other, 32000))  # cosine of the two embeddings
# __doc_end__

assert e.shape == (192,) and sv.shape == (20480,), (e.shape, sv.shape)
print("ok", tuple(e.shape), tuple(sv.shape))
