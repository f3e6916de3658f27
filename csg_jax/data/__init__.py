"""Input pipeline: data sets (digits, class folders, TFDS) and deterministic batch streams."""

from csg_jax.data.config import default_config, field_comments, validate_config
from csg_jax.data.dataset import (ArraySplit, CacheInfo, Dataset, Split, SubsetSplit,
                                  channel_statistics, normalization)
from csg_jax.data.load import load_dataset
from csg_jax.data.pipeline import (epoch_permutation, eval_batches, steps_per_epoch,
                                   stream_indices, train_batches)
from csg_jax.data.sources import SOURCES, Source

__all__ = [
    "ArraySplit", "CacheInfo", "Dataset", "SOURCES", "Source", "Split", "SubsetSplit",
    "channel_statistics", "default_config", "field_comments", "normalization",
    "epoch_permutation", "eval_batches", "load_dataset", "steps_per_epoch", "stream_indices",
    "train_batches", "validate_config",
]
