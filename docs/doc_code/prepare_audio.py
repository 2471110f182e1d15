"""docs/guide/prepare.md, "From Python": the audio steps of data preparation on one clip (a HuBERT folder
of upstream's layout, made here with random weights and 1 layer; a synthetic recording)."""

import json

import numpy as np
import torch
from _setup import workdir
from safetensors.torch import save_file

from gsv_ray.audio import write_wav
from gsv_ray.models.hubert import Hubert, HubertConfig

workdir()
torch.manual_seed(0)
hub = "GPT_SoVITS/pretrained_models/chinese-hubert-base"
__import__("os").makedirs(hub)
json.dump({"model_type": "hubert", "num_hidden_layers": 1}, open(f"{hub}/config.json", "w"))
save_file(Hubert(HubertConfig(num_hidden_layers=1)).state_dict(), f"{hub}/model.safetensors")
t = np.arange(24000) / 48000
write_wav("raw/a.wav", 0.5 * np.sin(2 * np.pi * 220 * t), 48000)  # 0.5 s at 48 kHz

# __doc_start__
from gsv_ray.models.hubert import Hubert
from gsv_ray.prepare.audio import ClipProblem, cnhubert, prepare_clip, write_cnhubert, write_wav32k

hubert = Hubert.from_folder("GPT_SoVITS/pretrained_models/chinese-hubert-base")
try:
    clip = prepare_clip("raw/a.wav")  # decode to 32 kHz, peak filter, loudness mix, wav16k
except ClipProblem as e:  # too loud, silent, unreadable: e.reason, str(e) names the file
    print(e.reason, e)
else:
    write_wav32k("logs/myvoice/5-wav32k/a.wav", clip.wav32k)
    write_cnhubert("logs/myvoice/4-cnhubert/a.wav.pt", cnhubert(hubert, clip.wav16k))
# __doc_end__

feats = torch.load("logs/myvoice/4-cnhubert/a.wav.pt", weights_only=True)
assert feats.shape == (1, 768, 24) and feats.dtype == torch.float32, feats.shape
print("ok", tuple(feats.shape))
