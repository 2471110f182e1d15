"""Upstream's text front-end (data-preparation step 1, ``2-name2text.txt``) per language.

One module per language (``en``, ``ja``, ``ko``, ``yue``, ``zh``), each following
:class:`gsv_ray.prepare.text.base.LanguageModule`; the data tables they read are package data under
``tables/`` (with their licence notices in ``tables/licences/``).
"""
