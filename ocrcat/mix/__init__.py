"""Mixtures of the catalog and the training path that reads them."""

# The training-path names import torch; they load on first use so that commands which only
# define or export mixtures do not pay torch's import time.
_LAZY = {
    "MixtureDataset": "ocrcat.mix.dataset",
    "VisionCollator": "ocrcat.mix.collate",
    "Batch": "ocrcat.mix.collate",
    "PlanBatchSampler": "ocrcat.mix.sampler",
    "load_tokenizer": "ocrcat.mix.tokenizer",
    "create_mixture": "ocrcat.mix.mixtures",
    "load_toml": "ocrcat.mix.mixtures",
    "describe_mixture": "ocrcat.mix.mixtures",
    "export_mixture": "ocrcat.mix.export",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ocrcat.mix' has no attribute {name!r}")
