"""Data layer: the dataset type, loaders, missing-modality protocols, scaling and batching.

Knows nothing of models. Importing it registers every loader of every module here (:func:`registry.discover`).
"""

from imer.data.registry import dataset_caveat, discover, list_datasets, load_dataset, register_dataset, resolve_data_dir

discover()  # first: loaders register in module-name order, whatever the imports below pull in

from imer.data.batching import Batch, SplitBatcher
from imer.data.custom import load_custom, save_custom
from imer.data.dataset import MultimodalDataset
from imer.data.missing import (
    FixedCondition,
    RandomMissing,
    all_conditions,
    derive_seed,
    fixed_mask,
    max_missing_rate,
    missing_fraction,
    parse_condition,
)
from imer.data.safe_pickle import safe_load_pickle
from imer.data.scaling import Standardizer
from imer.data.synthetic import make_synthetic

__all__ = [
    "dataset_caveat",
    "Batch",
    "FixedCondition",
    "MultimodalDataset",
    "RandomMissing",
    "SplitBatcher",
    "Standardizer",
    "all_conditions",
    "derive_seed",
    "fixed_mask",
    "list_datasets",
    "load_custom",
    "load_dataset",
    "make_synthetic",
    "max_missing_rate",
    "missing_fraction",
    "parse_condition",
    "register_dataset",
    "resolve_data_dir",
    "safe_load_pickle",
    "save_custom",
]
