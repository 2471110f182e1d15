"""SoVITS (VITS-style GPT-SoVITS v1/v2/v2Pro/v2ProPlus) generator, discriminator and losses."""

from gsv_ray.models.sovits.config import PRO_VERSIONS, VITS_VERSIONS, SoVITSConfig, load_s2_config
from gsv_ray.models.sovits.discriminator import MultiPeriodDiscriminator, periods_for_version
from gsv_ray.models.sovits.generator import POSTERIOR_PREFIX, DecodeTrace, GeneratorOutput, LatentStats, SoVITSGenerator
from gsv_ray.models.sovits.semantic import SemanticExtractor, semantic_state_dict

__all__ = [
    "PRO_VERSIONS",
    "VITS_VERSIONS",
    "SoVITSConfig",
    "load_s2_config",
    "SoVITSGenerator",
    "POSTERIOR_PREFIX",
    "GeneratorOutput",
    "LatentStats",
    "DecodeTrace",
    "MultiPeriodDiscriminator",
    "periods_for_version",
    "SemanticExtractor",
    "semantic_state_dict",
]
