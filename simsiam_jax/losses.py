"""SimSiam's symmetric negative-cosine loss and the collapse monitor (paper Eq. 1-4)."""

import jax
import jax.numpy as jnp

# torch.nn.functional.cosine_similarity's default: guards the norm of an all-zero vector.
_NORM_EPS = 1e-8


def at_least_float32(x):
  """bfloat16 outputs are compared in float32; float64 (the parity tests) stays float64."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def l2_normalize(x, axis: int = -1):
  norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
  return x / jnp.maximum(norm, _NORM_EPS)


def negative_cosine(p, z):
  """D(p, z) = -cos(p, z), averaged over the batch."""
  cosine = jnp.sum(l2_normalize(at_least_float32(p)) * l2_normalize(at_least_float32(z)), axis=-1)
  return -jnp.mean(cosine)


def cross_entropy_similarity(p, z):
  """D(p, z) = -softmax(z) . log softmax(p) over channels, averaged (paper Sec. 4.5)."""
  log_p = jax.nn.log_softmax(at_least_float32(p), axis=-1)
  return -jnp.mean(jnp.sum(jax.nn.softmax(at_least_float32(z), axis=-1) * log_p, axis=-1))


SIMILARITIES = {'cosine': negative_cosine, 'cross_entropy': cross_entropy_similarity}
SYMMETRIES = ('symmetric', 'asymmetric', 'asymmetric_2x')


def symmetric_loss(p1, p2, z1, z2, stop_gradient: bool = True, similarity: str = 'cosine'):
  """L = D(p1, sg(z2))/2 + D(p2, sg(z1))/2.

  `stop_gradient=False` exists for the paper's ablation (Fig. 2), where it collapses.
  """
  return 0.5 * asymmetric_loss(p1, z2, stop_gradient, similarity) + 0.5 * asymmetric_loss(
      p2, z1, stop_gradient, similarity)


def asymmetric_loss(p1, z2, stop_gradient: bool = True, similarity: str = 'cosine'):
  """L = D(p1, sg(z2)): one prediction per pair of views (paper Sec. 4.6)."""
  if stop_gradient:
    z2 = jax.lax.stop_gradient(z2)
  return SIMILARITIES[similarity](p1, z2)


def simsiam_loss(pairs, *, symmetric: bool = True, stop_gradient: bool = True,
                 similarity: str = 'cosine'):
  """The loss averaged over pairs of views, each a dict with 'p1', 'p2', 'z1', 'z2'."""
  if symmetric:
    per_pair = [symmetric_loss(o['p1'], o['p2'], o['z1'], o['z2'], stop_gradient, similarity)
                for o in pairs]
  else:
    per_pair = [asymmetric_loss(o['p1'], o['z2'], stop_gradient, similarity) for o in pairs]
  return sum(per_pair) / len(per_pair)


def num_view_pairs(loss_symmetry: str) -> int:
  """'asymmetric_2x' compensates the asymmetric loss's one prediction per pair by two pairs
  of views per image."""
  return 2 if loss_symmetry == 'asymmetric_2x' else 1


def normalized_std(z):
  """Mean over channels of the per-channel std of l2-normalised z (paper Fig. 2, middle).

  About 1/sqrt(dim) for a well-spread representation, 0 when it has collapsed.
  """
  return jnp.mean(jnp.std(l2_normalize(z.astype(jnp.float32)), axis=0))
