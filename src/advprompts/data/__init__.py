"""Datasets: the folder + metadata.csv format, a registry of named datasets, tiny-synth, and
loaders of real layouts (waterbirds, iwildcam) that yield the same samples. The embedded world's
benchmarks (waterbirds-synth, wildcam-synth, ...) join the registry as a plugin on first lookup."""

from advprompts.data import iwildcam, synthetic, waterbirds  # noqa: F401  (register tiny-synth, waterbirds, iwildcam)
from advprompts.data.folder import FolderDataset, collate, list_datasets, load_images, register_dataset, resolve_dataset

__all__ = ["FolderDataset", "collate", "list_datasets", "load_images", "register_dataset", "resolve_dataset"]
