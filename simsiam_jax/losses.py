"""SimSiam's symmetric negative-cosine loss, the collapse monitor (paper Eq. 1-4), and the
losses of the methods of the paper's Table 4 (SimCLR, MoCo v2, BYOL, SwAV)."""

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


# The other methods of the paper's Table 4. Inputs are global arrays: under jit on a mesh,
# every sum over the batch (SimCLR's negatives, SwAV's Sinkhorn) spans all devices and hosts.


def _cross_entropy_with_first_class(logits):
  return -jnp.mean(jax.nn.log_softmax(logits, axis=-1)[:, 0])


def nt_xent(z1, z2, temperature: float):
  """SimCLR's NT-Xent (google-research/simclr, objective.py add_contrastive_loss).

  Each view's positive is the other view of its image; its negatives are the other 2N - 2
  views of the batch. The loss is the batch mean of the two views' cross entropies, summed.
  """
  h1, h2 = l2_normalize(at_least_float32(z1)), l2_normalize(at_least_float32(z2))
  n = h1.shape[0]
  # A view is not its own negative: its self-similarity is pushed out of the softmax.
  self_mask = jnp.eye(n, dtype=h1.dtype) * 1e9

  def view_loss(a, b):
    logits = jnp.concatenate([a @ b.T / temperature, a @ a.T / temperature - self_mask], axis=1)
    # Row i's positive is column i (view b of image i).
    return -jnp.diagonal(jax.nn.log_softmax(logits, axis=-1)[:, :n])

  return jnp.mean(view_loss(h1, h2) + view_loss(h2, h1))


def info_nce(q, k, queue, temperature: float):
  """MoCo's contrastive loss (facebookresearch/moco, builder.py): the query's positive is its
  key, its negatives the queue's keys; cross entropy with the positive as class 0."""
  q, k = l2_normalize(at_least_float32(q)), l2_normalize(at_least_float32(k))
  positives = jnp.sum(q * k, axis=-1, keepdims=True)
  negatives = q @ queue.astype(q.dtype).T
  return _cross_entropy_with_first_class(
      jnp.concatenate([positives, negatives], axis=1) / temperature)


def byol_regression(p, z):
  """BYOL's loss of one prediction (deepmind-research byol, helpers.regression_loss):
  |p/|p| - z/|z||^2 = 2 - 2 cos(p, z), averaged over the batch."""
  difference = l2_normalize(at_least_float32(p)) - l2_normalize(at_least_float32(z))
  return jnp.mean(jnp.sum(jnp.square(difference), axis=-1))


def sinkhorn(scores, epsilon: float, iterations: int):
  """SwAV's codes (facebookresearch/swav, main_swav.py distributed_sinkhorn): an equipartition
  of the batch over the prototypes, [batch, prototypes], each row summing to 1."""
  q = jnp.exp(at_least_float32(scores) / epsilon).T
  num_prototypes, batch = q.shape
  q = q / jnp.sum(q)
  for _ in range(iterations):
    q = q / jnp.sum(q, axis=1, keepdims=True) / num_prototypes
    q = q / jnp.sum(q, axis=0, keepdims=True) / batch
  return (q * batch).T


def swapped_prediction(codes, scores, temperature: float):
  """-mean sum_k q_k log softmax(scores / t)_k: one view's scores predicting the other
  view's codes."""
  log_probs = jax.nn.log_softmax(at_least_float32(scores) / temperature, axis=-1)
  return -jnp.mean(jnp.sum(codes * log_probs, axis=-1))
