import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import numpy_negative_cosine
from simsiam_jax import losses


def _random(seed, shape=(32, 64)):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_symmetric_loss_matches_numpy_reference():
  z1, z2, noise1, noise2 = (_random(s) for s in range(4))
  # Predictions correlated with their targets, so the loss is far from 0.
  p1, p2 = z2 + 0.7 * noise1, z1 - 1.3 * noise2
  expected = 0.5 * numpy_negative_cosine(p1, z2) + 0.5 * numpy_negative_cosine(p2, z1)
  np.testing.assert_allclose(losses.symmetric_loss(p1, p2, z1, z2), expected, rtol=1e-5)


def test_negative_cosine_bounds():
  z = _random(0)
  np.testing.assert_allclose(losses.negative_cosine(z, 3 * z), -1.0, rtol=1e-6)
  np.testing.assert_allclose(losses.negative_cosine(z, -z), 1.0, rtol=1e-6)


@pytest.mark.parametrize('stop_gradient', [True, False])
def test_gradient_through_the_target_branch(stop_gradient):
  p1, p2, z1, z2 = (jnp.asarray(_random(s)) for s in range(4))
  grad_z = jax.grad(
      lambda z1, z2: losses.symmetric_loss(p1, p2, z1, z2, stop_gradient=stop_gradient),
      argnums=(0, 1))(z1, z2)
  grad_p = jax.grad(lambda p1: losses.symmetric_loss(p1, p2, z1, z2, stop_gradient))(p1)
  assert np.abs(grad_p).max() > 0
  if stop_gradient:
    assert all(np.all(g == 0) for g in grad_z)
  else:
    assert all(np.abs(g).max() > 0 for g in grad_z)


def test_normalized_std_is_zero_when_collapsed_and_near_inverse_sqrt_dim_when_spread():
  collapsed = np.tile(_random(0, (1, 128)), (256, 1))
  assert float(losses.normalized_std(collapsed)) < 1e-6
  spread = _random(1, (4096, 128))
  np.testing.assert_allclose(losses.normalized_std(spread), 1 / np.sqrt(128), rtol=0.02)
