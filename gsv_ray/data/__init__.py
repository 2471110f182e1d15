"""Data layer: GPT-SoVITS experiment folders (``logs/<exp>``) read as upstream's loaders read them,
datasets/collates/samplers for both training stages, and a synthetic experiment generator.

Typical use::

    exp = open_experiment("logs/my_voice", "sovits", "v2")   # raises GsvError if a part is missing
    print(exp.report)                                        # what was left out, and why
    train, val = split_datasets(SoVITSDataset, exp, split=SplitOptions(val_fraction=0.05))
    loader = DataLoader(train, batch_sampler=SoVITSBucketSampler(train.lengths, 8),
                        collate_fn=collate_sovits)
"""

from gsv_ray.data.experiment import (
    DataReport,
    Experiment,
    ExperimentOptions,
    Problem,
    SplitOptions,
    Utterance,
    open_experiment,
    split_datasets,
    split_names,
)
from gsv_ray.data.gpt import GPTBatch, GPTBucketSampler, GPTDataset, GPTItem, collate_gpt, gpt_batch_size
from gsv_ray.data.index import experiment_key, open_experiment_cached
from gsv_ray.data.sovits import (
    SOVITS_BOUNDARIES,
    SoVITSBatch,
    SoVITSBucketSampler,
    SoVITSDataset,
    SoVITSItem,
    collate_sovits,
)
from gsv_ray.data.synthetic import make_synthetic_experiment

__all__ = [
    "DataReport",
    "Experiment",
    "ExperimentOptions",
    "Problem",
    "SplitOptions",
    "Utterance",
    "open_experiment",
    "split_datasets",
    "split_names",
    "experiment_key",
    "open_experiment_cached",
    "GPTBatch",
    "GPTBucketSampler",
    "GPTDataset",
    "GPTItem",
    "collate_gpt",
    "gpt_batch_size",
    "SOVITS_BOUNDARIES",
    "SoVITSBatch",
    "SoVITSBucketSampler",
    "SoVITSDataset",
    "SoVITSItem",
    "collate_sovits",
    "make_synthetic_experiment",
]
