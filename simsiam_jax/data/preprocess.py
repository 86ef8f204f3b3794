"""On-device image normalisation: the host ships uint8, a quarter of float32's bytes."""

from typing import Any, Sequence

import jax.numpy as jnp


def normalize_images(images, mean: Sequence[float], std: Sequence[float], dtype: Any = jnp.float32):
  """uint8 [0, 255] images to (x/255 - mean) / std, per channel."""
  mean = jnp.asarray(mean, jnp.float32) * 255.0
  std = jnp.asarray(std, jnp.float32) * 255.0
  return ((images.astype(jnp.float32) - mean) / std).astype(dtype)
