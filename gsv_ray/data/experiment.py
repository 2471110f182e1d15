"""Open a GPT-SoVITS preprocessed experiment folder (``logs/<exp>/``) for one training stage: the
public names, from the modules that hold them, one job each: :mod:`~gsv_ray.data.layout` (the
folder's names and line formats), :mod:`~gsv_ray.data.report` (what was left out, and why),
:mod:`~gsv_ray.data.scan` (:func:`open_experiment`: the scan) and :mod:`~gsv_ray.data.split`
(validation split, upstream's small-set repetition).
"""

from __future__ import annotations

from gsv_ray.data.layout import (
    BERT_DIR,
    HUBERT_DIR,
    NAME2TEXT,
    SEMANTIC_HEADER,
    SEMANTIC_TSV,
    SEMANTIC_VOCAB,
    STAGES,
    SV_DIR,
    WAV_DIR,
    name2text_fields,
    symbol_set_of,
)
from gsv_ray.data.report import SEVERITIES, DataReport, Problem
from gsv_ray.data.scan import (
    Experiment,
    ExperimentOptions,
    Utterance,
    open_experiment,
    spec_frames,
    ssl_features_problem,
)
from gsv_ray.data.split import (
    UPSTREAM_MIN_ITEMS,
    SplitOptions,
    copy_key,
    experiment_split,
    repeat_to_minimum,
    repeated,
    split_datasets,
    split_names,
    upstream_repeats,
)

__all__ = [
    "STAGES",
    "name2text_fields",
    "ssl_features_problem",
    "NAME2TEXT",
    "BERT_DIR",
    "HUBERT_DIR",
    "WAV_DIR",
    "SEMANTIC_TSV",
    "SV_DIR",
    "SEMANTIC_HEADER",
    "SEMANTIC_VOCAB",
    "ExperimentOptions",
    "Problem",
    "SEVERITIES",
    "DataReport",
    "Utterance",
    "Experiment",
    "open_experiment",
    "symbol_set_of",
    "SplitOptions",
    "split_names",
    "split_datasets",
    "experiment_split",
    "repeat_to_minimum",
    "repeated",
    "copy_key",
    "upstream_repeats",
    "UPSTREAM_MIN_ITEMS",
    "spec_frames",
]
