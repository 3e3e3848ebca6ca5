"""Datasets, transforms and the data module."""

from .datamodule import SemiSupervisedDataModule
from .datasets import DataFileError, EvalDataset, LabeledDataset, SampleReader, UnlabeledDataset, pad_collate
from .demo import build_demo_dataset
from .sources import DataSourceError, Sample, load_samples

__all__ = [
    "DataFileError",
    "DataSourceError",
    "EvalDataset",
    "LabeledDataset",
    "Sample",
    "SampleReader",
    "SemiSupervisedDataModule",
    "UnlabeledDataset",
    "build_demo_dataset",
    "load_samples",
    "pad_collate",
]
