"""SoVITS (VITS-style GPT-SoVITS v1/v2/v2Pro/v2ProPlus) generator and its parts."""

from gsv_ray.models.sovits.config import PRO_VERSIONS, VITS_VERSIONS, SoVITSConfig, load_s2_config
from gsv_ray.models.sovits.generator import DecodeTrace, GeneratorOutput, LatentStats, SoVITSGenerator
from gsv_ray.models.sovits.semantic import SemanticExtractor, semantic_state_dict

__all__ = [
    "PRO_VERSIONS",
    "VITS_VERSIONS",
    "SoVITSConfig",
    "load_s2_config",
    "SoVITSGenerator",
    "GeneratorOutput",
    "LatentStats",
    "DecodeTrace",
    "SemanticExtractor",
    "semantic_state_dict",
]
