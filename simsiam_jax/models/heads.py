"""The MLP heads of SimSiam (paper Sec. 4, official `simsiam/builder.py`).

Where BatchNorm goes is a switch for the paper's Table 3: `HEAD_BATCH_NORM` maps each
setting to (BN on hidden layers, on the projector output, on the predictor output).
A linear layer followed by BN has no bias (BN's shift replaces it); one without has a bias.
Linear layers start from torch.nn.Linear's default initialisation, as in the official code.
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from simsiam_jax.models import layers

HEAD_BATCH_NORM = {
    'none': (False, False, False),
    'hidden': (True, False, False),
    'default': (True, True, False),
    'all': (True, True, True),
}


def _linear_bn(x, features: int, *, batch_norm: bool, train: bool, dtype: Any, affine=True):
  x = layers.torch_dense(x, features, use_bias=not batch_norm, dtype=dtype)
  if batch_norm:
    x = layers.BatchNorm(use_running_average=not train, dtype=dtype, use_scale=affine,
                         use_bias=affine)(x)
  return x


class Projector(nn.Module):
  """`num_layers` Linear-BN layers, ReLU between them, no affine on the output BN.

  ImageNet uses 3 layers, the paper's CIFAR recipe 2. The output BN has no scale or bias:
  the official code freezes the last linear bias and uses `BatchNorm1d(affine=False)`.
  """
  num_layers: int = 3
  hidden_dim: int = 2048
  output_dim: int = 2048
  hidden_bn: bool = True
  output_bn: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = True):
    for _ in range(self.num_layers - 1):
      x = nn.relu(_linear_bn(x, self.hidden_dim, batch_norm=self.hidden_bn, train=train,
                             dtype=self.dtype))
    return _linear_bn(x, self.output_dim, batch_norm=self.output_bn, train=train,
                      dtype=self.dtype, affine=False)


class Predictor(nn.Module):
  """Bottleneck MLP h: Linear-BN-ReLU-Linear; by default no BN on the output."""
  hidden_dim: int = 512
  output_dim: int = 2048
  hidden_bn: bool = True
  output_bn: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z, train: bool = True):
    x = nn.relu(_linear_bn(z, self.hidden_dim, batch_norm=self.hidden_bn, train=train,
                           dtype=self.dtype))
    return _linear_bn(x, self.output_dim, batch_norm=self.output_bn, train=train,
                      dtype=self.dtype)
