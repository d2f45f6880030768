"""Datasets per regime behind one small interface (`load(dataset_id, split, ...) -> Split`)."""
from sweeps.train.data.registry import (
    DATASETS, check_id, data_root, default_regime, is_user_dataset, kind_of, load, names,
)
from sweeps.train.data.split import Split, stratified_indices

__all__ = ["DATASETS", "Split", "check_id", "data_root", "default_regime", "is_user_dataset", "kind_of",
           "load", "names", "stratified_indices"]
