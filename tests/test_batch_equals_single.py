"""A clip gets the same answer alone as in any batch: the speech encoder masks padding (keys and pooling).

Real default model, real RAVDESS speech joined and cut to 0.5-30 s (bench/batch_vs_single.py). CPU float32:
max abs probability difference <= 1e-3; CUDA bf16 autocast: <= 1e-2.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from backend.model import load_speech_branch
from backend.settings import DEFAULT_MODEL_DIR
from bench.batch_vs_single import max_batch_vs_single, real_clips

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("device", "limit"),
    [
        ("cpu", 1e-3),
        pytest.param("cuda", 1e-2, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
    ],
)
def test_batch_equals_single(device: str, limit: float, shared_data: Path) -> None:
    # EMO_TEST_MODEL: a copy whose config points at local backbones (the offline GPU box)
    model = load_speech_branch(os.environ.get("EMO_TEST_MODEL", str(DEFAULT_MODEL_DIR)), device)
    assert max_batch_vs_single(model, real_clips(shared_data)) <= limit
