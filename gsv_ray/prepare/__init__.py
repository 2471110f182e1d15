"""Data preparation: from a ``.list`` and its recordings to a GPT-SoVITS experiment folder.

So far as a library: the audio steps of upstream's ``2-get-hubert-wav32k.py`` (:mod:`gsv_ray.prepare.audio`)
and the Mandarin BERT features of ``1-get-text.py`` (:mod:`gsv_ray.prepare.bert`); the ``gsv-ray prepare``
command comes next.
"""
