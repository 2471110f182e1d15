"""docs/guide/library.md, "Models": our models load GPT-SoVITS's weights (full-size v2 files, made here
with random weights in upstream's formats)."""

import torch
from _setup import workdir

from gsv_ray.io.writers import write_gpt_export, write_sovits_export
from gsv_ray.models.gpt import T2SConfig, Text2SemanticDecoder
from gsv_ray.models.sovits import SoVITSConfig, SoVITSGenerator
from gsv_ray.models.sovits.config import load_s2_config
from gsv_ray.resources import s1_config

workdir()
torch.manual_seed(0)
write_sovits_export(
    "SoVITS_weights_v2/myvoice_e8_s200.pth",
    SoVITSGenerator(SoVITSConfig.default("v2")).state_dict(),
    config=load_s2_config("v2"),
    info="8epoch_200iteration",
    version="v2",
)
write_gpt_export(
    "GPT_weights_v2/myvoice-e15.ckpt",
    Text2SemanticDecoder(T2SConfig.default("v2")).state_dict(),
    config=s1_config("v2"),
    info="GPT-e15",
)
ssl_features = torch.randn(1, 768, 50)  # HuBERT features [B, 768, T50]

# __doc_start__
from gsv_ray.io import read
from gsv_ray.models.gpt import T2SConfig, Text2SemanticDecoder, load_upstream_state_dict
from gsv_ray.models.sovits import SoVITSConfig, SoVITSGenerator

g = SoVITSGenerator(SoVITSConfig.default("v2"))  # full size, upstream's s2.json
f = read("SoVITS_weights_v2/myvoice_e8_s200.pth")
missing, unexpected = g.load_state_dict({k: v.float() for k, v in f.state_dict.items()}, strict=False)
# missing == exactly the 103 enc_q.* keys (exports drop the posterior encoder); unexpected == []
codes = g.extract_latent(ssl_features)  # [B, 1, T25] semantic tokens

gpt = Text2SemanticDecoder(T2SConfig.default("v2"))
load_upstream_state_dict(gpt, read("GPT_weights_v2/myvoice-e15.ckpt").state_dict)  # strict, "model." keys
# __doc_end__

assert len(missing) == 103 and all(k.startswith("enc_q.") for k in missing) and unexpected == [], (missing, unexpected)
assert codes.shape == (1, 1, 25), codes.shape
print("ok", tuple(codes.shape))
