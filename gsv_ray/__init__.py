"""gsv-ray: continue training GPT-SoVITS voices from the weights users actually keep.

Folders: ``io`` reads and writes GPT-SoVITS files, ``models`` holds our key-compatible
models, and the CLI (``cli``) only parses arguments and calls library functions.
"""

__version__ = "0.1.0"
