"""Shared by the tests of components/image_check.py (test_image_check_*.py): a noise image, and the pixels the
project's decoder makes of checked bytes."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from components.image_check import ImageInfo
from components.preprocess import decode_and_resize


def _noise(width: int = 200, height: int = 150, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _pixels(data: bytes, info: ImageInfo) -> np.ndarray:
    """What the project's decoder makes of `data`, letterbox removed (scale 1, so pixels are unchanged)."""
    assert tf.io.decode_image(data, channels=3, expand_animations=False).shape == (info.height, info.width, 3)
    size = max(info.width, info.height)
    square = decode_and_resize(tf.constant(data), size).numpy()
    top, left = (size - info.height) // 2, (size - info.width) // 2
    return square[top : top + info.height, left : left + info.width].astype(int)
