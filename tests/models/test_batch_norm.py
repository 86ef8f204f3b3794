"""layers.BatchNorm's statistics: torch's two passes in float32 and float64 (the parity tests
hold it to torch), one pass over bfloat16 activations (on a pod: one read of the activations
and one all-reduce per layer instead of two of each, BENCHMARKS.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simsiam_jax.models import layers


def two_pass(x):
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  return mean, jnp.mean(jnp.square(x - mean), axes)


def activations(dtype=jnp.float64, mean=3.0, spread=2.0, seed=0):
  """Channels whose mean is large against their spread, as convolution outputs can be."""
  x = jax.random.normal(jax.random.key(seed), (6, 5, 5, 4), dtype) * spread
  return x + mean * jnp.arange(1, 5, dtype=dtype)


@pytest.mark.parametrize('shift', ['zero', 'one', 'near the mean'])
def test_one_pass_moments_are_the_two_pass_moments_in_float64(shift):
  with jax.enable_x64(True):
    x = activations()
    shift = {'zero': jnp.zeros(4), 'one': jnp.ones(4),
             'near the mean': two_pass(x)[0] + 0.01}[shift]
    for ours, expected in zip(layers._one_pass_moments(x, shift), two_pass(x)):
      np.testing.assert_allclose(ours, expected, rtol=1e-12)


def test_the_shift_keeps_float32_digits_a_large_mean_would_cancel():
  """A channel at 1000 with spread 1: E[x^2] - E[x]^2 in float32 loses the variance; shifted
  by a running mean near 1000 it keeps it."""
  x = activations(jnp.float32, mean=1000.0, spread=1.0)
  with jax.enable_x64(True):
    exact = np.asarray(two_pass(x.astype(jnp.float64))[1])
  _, unshifted = layers._one_pass_moments(x, jnp.zeros(4, jnp.float32))
  _, shifted = layers._one_pass_moments(x, two_pass(x)[0] - 0.5)
  assert np.max(np.abs(shifted / exact - 1)) < 1e-5
  assert np.max(np.abs(unshifted / exact - 1)) > 1e-3


def test_no_gradient_flows_through_the_shift():
  """The second view is shifted by the running mean the first view's pass updated: its
  statistics must not depend on the first view through it."""
  with jax.enable_x64(True):
    first, second = activations(seed=1), activations(seed=2)

    def second_view_statistics(first):
      running_mean = 0.9 * jnp.zeros(4) + 0.1 * jnp.mean(first, (0, 1, 2))
      mean, var = layers._one_pass_moments(second, shift=running_mean)
      return jnp.sum(mean) + jnp.sum(var)

    assert np.all(jax.grad(second_view_statistics)(first) == 0)


def batch_norm_statistics(x):
  """The batch mean and biased variance a train-mode BatchNorm normalised x with, and its
  output."""
  norm = layers.BatchNorm(use_running_average=False, momentum=0.0, dtype=jnp.float32)
  variables = norm.init(jax.random.key(0), x)
  y, updated = norm.apply(variables, x, mutable=['batch_stats'])
  count = x.size // x.shape[-1]
  stats = updated['batch_stats']
  return stats['mean'], stats['var'] * (count - 1) / count, y


def test_bfloat16_activations_take_one_pass_and_float32_two():
  # Means 50 to 200 times the spread: the two differ well beyond float32's last bits.
  x = activations(jnp.float32, mean=50.0, spread=1.0).astype(jnp.bfloat16)
  upcast = x.astype(jnp.float32)
  one = layers._one_pass_moments(upcast, jnp.zeros(4, jnp.float32))[1]
  two = two_pass(upcast)[1]
  assert np.max(np.abs(one / two - 1)) > 1e-4
  np.testing.assert_allclose(batch_norm_statistics(x)[1], one, rtol=1e-6)
  np.testing.assert_allclose(batch_norm_statistics(upcast)[1], two, rtol=1e-6)


def test_one_pass_statistics_of_bfloat16_activations_keep_the_digits_that_matter():
  """At the start (running mean zero, so no shift), for means up to 20 times the spread, the
  one-pass statistics and output of bfloat16 activations are those of the same values in
  float64 within 1e-4: far inside the activations' own rounding (2^-8 = 4e-3)."""
  x = activations(jnp.float32, mean=5.0, spread=1.0).astype(jnp.bfloat16)
  mean, var, y = batch_norm_statistics(x)
  exact = np.asarray(x, np.float64)
  exact_mean = exact.mean((0, 1, 2))
  exact_var = np.square(exact - exact_mean).mean((0, 1, 2))
  exact_y = (exact - exact_mean) / np.sqrt(exact_var + 1e-5)
  np.testing.assert_allclose(mean, exact_mean, rtol=1e-6)
  np.testing.assert_allclose(var, exact_var, rtol=1e-4)
  assert np.max(np.abs(np.asarray(y) - exact_y)) < 1e-4 * np.max(np.abs(exact_y))
