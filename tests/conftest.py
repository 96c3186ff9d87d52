"""Shared fixtures: tiny offline models (one folder per architecture per test session)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread: on 2 shared cores, two spinning OpenMP threads make tiny-model matmuls ~15x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

DATA = Path(__file__).parent / "data"


def make_tiny(tmp_path_factory, arch: str = "llama", **kwargs) -> Path:
    """A cached tiny model folder for `arch` (and size kwargs) shared by the whole test session."""
    from rlhf.tiny import make_tiny_model

    name = "tiny-" + arch + "".join(f"-{k}{v}" for k, v in sorted(kwargs.items()))
    root = tmp_path_factory.getbasetemp() / "models"
    folder = root / name
    if not (folder / "config.json").is_file():
        make_tiny_model(folder, arch=arch, **kwargs)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory, "llama")
