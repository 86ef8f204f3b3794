"""Layers with PyTorch's semantics, so that the same weights give the official code's numbers.

- `BatchNorm` normalises with the biased batch variance but keeps the *unbiased* one in its
  running average, as `torch.nn.BatchNorm{1,2}d` do (flax's `nn.BatchNorm` keeps the biased
  one, which shifts every evaluation-mode output by a factor of sqrt(n / (n - 1)) per layer).
  Statistics are taken over every axis but the last of the global array, so under `jax.jit`
  on a mesh they are the whole batch's, as SyncBN's. With bfloat16 activations the
  statistics come from one pass (sum and sum of squares, shifted by the running mean): on a
  pod that is one read of the activations and one all-reduce per layer, where
  mean-then-variance, torch's order, kept for float32 and float64, reads them twice and
  waits on two all-reduces in turn (BENCHMARKS.md, pod plan).
- `torch_dense` starts from `torch.nn.Linear`'s default: weight and bias uniform in
  +-1/sqrt(fan_in) (flax's default lecun_normal is sqrt(3) wider, and its bias starts at 0).
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]

# Variance 1/(3 fan_in) is the variance of U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_kernel_init = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')


def torch_linear_bias_init(fan_in: int) -> Initializer:
  bound = 1 / fan_in**0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                   bound)


def torch_dense(x, features: int, *, use_bias: bool = True, dtype: Any = jnp.float32):
  """`torch.nn.Linear(x.shape[-1], features)` applied to x, as an `nn.Dense` of the calling
  module (weight stored transposed, [in, out]). Call it inside a compact method."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, kernel_init=torch_linear_kernel_init,
                  bias_init=torch_linear_bias_init(x.shape[-1]))(x)


class BatchNorm(nn.Module):
  """torch.nn.BatchNorm: biased variance to normalise, unbiased in the running average.

  `momentum` is flax's (the weight of the old running value): torch's momentum 0.1 is 0.9.
  Parameter and statistic names are flax's (`scale`, `bias`; `mean`, `var`).
  """
  use_running_average: bool
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = jnp.float32
  use_scale: bool = True
  use_bias: bool = True
  scale_init: Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    one_pass = x.dtype == jnp.bfloat16
    # Statistics in float32 at least (bfloat16 activations), float64 when given float64.
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    elif one_pass:
      mean, var = _one_pass_moments(x, shift=running_mean.value)
    else:
      # Two passes, as torch computes them.
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axes)
      var = jnp.mean(jnp.square(x - mean), axes)
    if not (self.use_running_average or self.is_initializing()):
      count = x.size // features
      unbiased = var * (count / max(count - 1, 1))
      running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
      running_var.value = self.momentum * running_var.value + (1 - self.momentum) * unbiased
    multiplier = jax.lax.rsqrt(var + self.epsilon)
    if self.use_scale:
      multiplier = multiplier * self.param('scale', self.scale_init, (features,), jnp.float32)
    y = (x - mean) * multiplier
    if self.use_bias:
      y = y + self.param('bias', nn.initializers.zeros, (features,), jnp.float32)
    return y.astype(self.dtype)


def _one_pass_moments(x, shift):
  """Mean and biased variance over every axis but the last, from one pass over x.

  The variance is E[(x-s)^2] - E[x-s]^2 for a per-channel s that does not change it
  algebraically; with s near the mean (the running mean, once it has followed a few
  batches) the subtraction keeps the digits float32 has. Taken only for bfloat16
  activations, whose own rounding (2^-8) is far coarser than what the subtraction can lose
  at the start, when s is zero (tests/models/test_batch_norm.py: within 1e-4 of float64 for
  means up to 20 times the spread).
  """
  axes = tuple(range(x.ndim - 1))
  # A constant: the running mean depends on the parameters through earlier calls (the first
  # view's update before the second view's pass), and no gradient may flow that way.
  shift = jax.lax.stop_gradient(shift).astype(x.dtype)
  shifted = x - shift
  shifted_mean = jnp.mean(shifted, axes)
  shifted_square_mean = jnp.mean(jnp.square(shifted), axes)
  var = jnp.maximum(shifted_square_mean - jnp.square(shifted_mean), 0)
  return shifted_mean + shift, var
