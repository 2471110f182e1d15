"""Data preparation: from a ``.list`` and its recordings to a GPT-SoVITS experiment folder.

So far the audio steps of upstream's ``2-get-hubert-wav32k.py`` as a library
(:mod:`gsv_ray.prepare.audio`); the ``gsv-ray prepare`` command comes next.
"""
