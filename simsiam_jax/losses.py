"""SimSiam's symmetric negative-cosine loss and the collapse monitor (paper Eq. 1-4)."""

import jax
import jax.numpy as jnp

# torch.nn.functional.cosine_similarity's default: guards the norm of an all-zero vector.
_NORM_EPS = 1e-8


def l2_normalize(x, axis: int = -1):
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.maximum(norm, _NORM_EPS)


def negative_cosine(p, z):
  """D(p, z) = -cos(p, z), averaged over the batch."""
  cosine = jnp.sum(l2_normalize(p.astype(jnp.float32)) * l2_normalize(z.astype(jnp.float32)),
                   axis=-1)
  return -jnp.mean(cosine)


def symmetric_loss(p1, p2, z1, z2, stop_gradient: bool = True):
  """L = D(p1, sg(z2))/2 + D(p2, sg(z1))/2.

  `stop_gradient=False` exists for the paper's ablation (Fig. 2), where it collapses.
  """
  if stop_gradient:
    z1, z2 = jax.lax.stop_gradient(z1), jax.lax.stop_gradient(z2)
  return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def normalized_std(z):
  """Mean over channels of the per-channel std of l2-normalised z (paper Fig. 2, middle).

  About 1/sqrt(dim) for a well-spread representation, 0 when it has collapsed.
  """
  return jnp.mean(jnp.std(l2_normalize(z.astype(jnp.float32)), axis=0))
