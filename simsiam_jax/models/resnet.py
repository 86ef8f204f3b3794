"""ResNet v1.5 backbones (torchvision layout) without the classifier.

Matches torchvision's `resnet*` parameter for parameter and output for output: stride on the
3x3 conv of the bottleneck (v1.5), bias-free convolutions padded (k - 1) / 2 on every side as
torch pads them (XLA's 'SAME' pads a strided 3x3 by (0, 1) on even inputs, which shifts the
sampling grid by a pixel), BatchNorm with torch's semantics (`layers.BatchNorm`: eps 1e-5,
momentum 0.1, unbiased running variance), He (fan-out) initialisation, and the last
BatchNorm scale of every residual branch set to zero (`zero_init_residual=True`, as the
official SimSiam code builds its encoder). `models/torchvision_format.py` maps the names.

`remat` (config.model.remat) recomputes each residual block in the backward pass
(jax.checkpoint with the named policy of jax.checkpoint_policies) instead of keeping its
activations: less memory per image for about one more forward pass of compute. The
parameters and their names stay the same.
"""

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from simsiam_jax.models import layers

ModuleDef = Any

# config.model.remat: 'none', or the jax.checkpoint_policies policy of each block's remat.
REMAT_POLICIES = ('none', 'nothing_saveable', 'dots_saveable')

conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def TorchConv(features: int, kernel_size, strides=1, *, dtype: Any = jnp.float32,
              name: str | None = None) -> nn.Conv:  # pylint: disable=invalid-name
  """torch.nn.Conv2d(bias=False, padding=(k - 1) // 2) with torchvision's initialisation."""
  padding = [((k - 1) // 2, (k - 1) // 2) for k in kernel_size]
  return nn.Conv(features, kernel_size, strides, padding=padding, use_bias=False, dtype=dtype,
                 kernel_init=conv_kernel_init, name=name)


class BasicBlock(nn.Module):
  """Two 3x3 convolutions; ResNet-18/34."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  expansion = 1

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (3, 3), self.strides)(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters, (1, 1), self.strides, name='downsample_conv')(residual)
      residual = self.norm(name='downsample_norm')(residual)
    return nn.relu(residual + y)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand by 4; ResNet-50/101/152."""
  filters: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  expansion = 4

  @nn.compact
  def __call__(self, x):
    residual = x
    y = self.conv(self.filters, (1, 1))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3), self.strides)(y)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters * self.expansion, (1, 1))(y)
    y = self.norm(scale_init=nn.initializers.zeros)(y)
    if residual.shape != y.shape:
      residual = self.conv(self.filters * self.expansion, (1, 1), self.strides,
                           name='downsample_conv')(residual)
      residual = self.norm(name='downsample_norm')(residual)
    return nn.relu(residual + y)


class ResNet(nn.Module):
  """Returns globally average-pooled features of size `feature_dim`."""
  stage_sizes: Sequence[int]
  block_cls: ModuleDef
  width: int = 64
  cifar_stem: bool = False
  dtype: Any = jnp.float32
  remat: str = 'none'

  @property
  def feature_dim(self) -> int:
    return self.width * 8 * self.block_cls.expansion

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(TorchConv, dtype=self.dtype)
    norm = functools.partial(layers.BatchNorm, use_running_average=not train, dtype=self.dtype)
    if self.cifar_stem:
      x = conv(self.width, (3, 3), name='stem_conv')(x)
      x = nn.relu(norm(name='stem_norm')(x))
    else:
      x = conv(self.width, (7, 7), (2, 2), name='stem_conv')(x)
      x = nn.relu(norm(name='stem_norm')(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    block_cls = self.block_cls if self.remat == 'none' else nn.remat(
        self.block_cls, policy=getattr(jax.checkpoint_policies, self.remat))
    index = 0
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        # Named as without remat (flax would prefix 'Checkpoint'), so checkpoints and the
        # torchvision names are the same either way.
        x = block_cls(self.width * 2**stage, conv=conv, norm=norm, strides=strides,
                      name=f'{self.block_cls.__name__}_{index}')(x)
        index += 1
    return jnp.mean(x, axis=(1, 2))


ARCHITECTURES: dict[str, tuple[Sequence[int], Callable]] = {
    'resnet18': ((2, 2, 2, 2), BasicBlock),
    'resnet34': ((3, 4, 6, 3), BasicBlock),
    'resnet50': ((3, 4, 6, 3), Bottleneck),
    'resnet101': ((3, 4, 23, 3), Bottleneck),
    'resnet152': ((3, 8, 36, 3), Bottleneck),
}

BACKBONE_NAMES = tuple(ARCHITECTURES)


def total_stride(cifar_stem: bool) -> int:
  """Input pixels per pixel of the last stage: the stem's (1, or 4 with the 7x7 stride-2
  convolution and the max-pool) times the three strided stages' 8."""
  return (1 if cifar_stem else 4) * 8


def create_backbone(name: str, *, width: int = 64, cifar_stem: bool = False,
                    dtype: Any = jnp.float32, remat: str = 'none') -> ResNet:
  if name not in ARCHITECTURES:
    raise ValueError(f'unknown backbone {name!r}; choose one of {", ".join(BACKBONE_NAMES)}')
  stage_sizes, block_cls = ARCHITECTURES[name]
  return ResNet(stage_sizes=stage_sizes, block_cls=block_cls, width=width,
                cifar_stem=cifar_stem, dtype=dtype, remat=remat)
