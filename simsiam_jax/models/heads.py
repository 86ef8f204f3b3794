"""The MLP heads of SimSiam (paper Sec. 4, official `simsiam/builder.py`)."""

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def _batch_norm(train: bool, dtype: Any, **kwargs):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, **kwargs)


class Projector(nn.Module):
  """`num_layers` bias-free Linear-BN layers, ReLU between them, no affine on the last BN.

  ImageNet uses 3 layers, the paper's CIFAR recipe 2. The output BN has no scale or bias:
  the official code freezes the last linear bias and uses `BatchNorm1d(affine=False)`.
  """
  num_layers: int = 3
  hidden_dim: int = 2048
  output_dim: int = 2048
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    dense = functools.partial(nn.Dense, use_bias=False, dtype=self.dtype)
    for _ in range(self.num_layers - 1):
      x = nn.relu(_batch_norm(train, self.dtype)(dense(self.hidden_dim)(x)))
    x = dense(self.output_dim)(x)
    return _batch_norm(train, self.dtype, use_scale=False, use_bias=False)(x)


class Predictor(nn.Module):
  """Bottleneck MLP h: Linear(no bias)-BN-ReLU-Linear(bias); no BN on the output."""
  hidden_dim: int = 512
  output_dim: int = 2048
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, train: bool = True):
    x = nn.Dense(self.hidden_dim, use_bias=False, dtype=self.dtype)(z)
    x = nn.relu(_batch_norm(train, self.dtype)(x))
    return nn.Dense(self.output_dim, dtype=self.dtype)(x)
