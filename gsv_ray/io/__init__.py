"""Reading and writing GPT-SoVITS files, safely and byte-format faithful.

``read`` loads any GPT-SoVITS file with weights-only semantics and identifies it; the writers
produce files GPT-SoVITS itself loads (fp16, HParams config, version tags), atomically.
"""

from gsv_ray.io.reader import GsvFile, read, sha256_file

__all__ = ["GsvFile", "read", "sha256_file"]
