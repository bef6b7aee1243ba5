"""Labelled datasets for the pipeline: bundled Debian data, a synthetic espeak-ng set, the user's own.

See :func:`load_dataset` for the spec strings and :func:`list_sources` for what is available.
"""

from densattn.data.dataset import LabeledDataset, Modality, stratified_indices
from densattn.data.sources import describe_sources, list_sources, load_dataset

__all__ = [
    "LabeledDataset",
    "Modality",
    "describe_sources",
    "list_sources",
    "load_dataset",
    "stratified_indices",
]
