"""Speaker verification: ERes2NetV2 as GPT-SoVITS v2Pro ships it, and ``spk_sim``."""

from gsv_ray.models.sv.encoder import EMBEDDING_DIM, SV_DIM, SpeakerEncoder, SpeakerVectors, spk_sim
from gsv_ray.models.sv.eres2netv2 import ERes2NetV2

__all__ = ["ERes2NetV2", "SpeakerEncoder", "SpeakerVectors", "spk_sim", "EMBEDDING_DIM", "SV_DIM"]
