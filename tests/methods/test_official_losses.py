"""Each method's loss, value and gradient, against its official code transcribed in torch.

The transcriptions below come from the repositories (commits in test_official_defaults.py's
SOURCES), not from our functions: they keep the official names, order of operations and
where gradients are stopped (torch.no_grad, .detach()), with the multi-GPU gathers of a
single process. Inputs are float64 on both sides, so the bound is float64 rounding.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import base
from simsiam_jax import losses
from simsiam_jax.methods import byol, moco_v2, swav

torch = pytest.importorskip('torch')
nn, F = torch.nn, torch.nn.functional

RTOL = 1e-10


# facebookresearch/simsiam main_simsiam.py (train) and simsiam/builder.py (forward).
def simsiam_official(p1, p2, z1, z2):
  criterion = nn.CosineSimilarity(dim=1)
  z1, z2 = z1.detach(), z2.detach()  # builder.py: return p1, p2, z1.detach(), z2.detach()
  return -(criterion(p1, z2).mean() + criterion(p2, z1).mean()) * 0.5


# google-research/simclr tf2/objective.py add_contrastive_loss, strategy=None (one replica).
LARGE_NUM = 1e9


def tf_l2_normalize(x, axis):
  """tf.math.l2_normalize: x * rsqrt(max(sum(x ** 2), 1e-12))."""
  return x * torch.rsqrt(torch.clamp(torch.sum(x ** 2, dim=axis, keepdim=True), min=1e-12))


def softmax_cross_entropy_with_logits(labels, logits):
  return -torch.sum(labels * F.log_softmax(logits, dim=-1), dim=-1)


def add_contrastive_loss(hidden, hidden_norm=True, temperature=1.0):
  if hidden_norm:
    hidden = tf_l2_normalize(hidden, -1)
  hidden1, hidden2 = torch.split(hidden, hidden.shape[0] // 2, 0)
  batch_size = hidden1.shape[0]
  hidden1_large = hidden1
  hidden2_large = hidden2
  labels = F.one_hot(torch.arange(batch_size), batch_size * 2).to(hidden.dtype)
  masks = F.one_hot(torch.arange(batch_size), batch_size).to(hidden.dtype)
  logits_aa = torch.matmul(hidden1, hidden1_large.T) / temperature
  logits_aa = logits_aa - masks * LARGE_NUM
  logits_bb = torch.matmul(hidden2, hidden2_large.T) / temperature
  logits_bb = logits_bb - masks * LARGE_NUM
  logits_ab = torch.matmul(hidden1, hidden2_large.T) / temperature
  logits_ba = torch.matmul(hidden2, hidden1_large.T) / temperature
  loss_a = softmax_cross_entropy_with_logits(labels, torch.cat([logits_ab, logits_aa], 1))
  loss_b = softmax_cross_entropy_with_logits(labels, torch.cat([logits_ba, logits_bb], 1))
  return torch.mean(loss_a + loss_b)


# facebookresearch/moco moco/builder.py MoCo.forward after the encoders; main_moco.py's
# criterion. The queue is a buffer of normalised keys, [dim, K].
def moco_official(q, k, queue, T):
  q = F.normalize(q, dim=1)
  with torch.no_grad():
    k = F.normalize(k, dim=1)
  l_pos = torch.einsum('nc,nc->n', [q, k]).unsqueeze(-1)
  l_neg = torch.einsum('nc,ck->nk', [q, queue.clone().detach()])
  logits = torch.cat([l_pos, l_neg], dim=1)
  logits /= T
  labels = torch.zeros(logits.shape[0], dtype=torch.long)
  return nn.CrossEntropyLoss()(logits, labels)


# deepmind-research byol/utils/helpers.py and byol_experiment.py loss_fn (repr_loss).
def byol_l2_normalize(x, axis=None, epsilon=1e-12):
  square_sum = torch.sum(torch.square(x), dim=axis, keepdim=True)
  x_inv_norm = torch.rsqrt(torch.clamp(square_sum, min=epsilon))
  return x * x_inv_norm


def regression_loss(x, y):
  normed_x, normed_y = byol_l2_normalize(x, axis=-1), byol_l2_normalize(y, axis=-1)
  return torch.sum((normed_x - normed_y) ** 2, dim=-1)


def byol_official(prediction_view1, prediction_view2, projection_view1, projection_view2):
  repr_loss = regression_loss(prediction_view1, projection_view2.detach())
  repr_loss = repr_loss + regression_loss(prediction_view2, projection_view1.detach())
  return torch.mean(repr_loss)


# facebookresearch/swav main_swav.py: distributed_sinkhorn (world_size 1) and train()'s loss
# with --nmb_crops 2 --crops_for_assign 0 1 and no queue.
@torch.no_grad()
def distributed_sinkhorn(out, epsilon, sinkhorn_iterations, world_size=1):
  Q = torch.exp(out / epsilon).t()
  B = Q.shape[1] * world_size
  K = Q.shape[0]
  sum_Q = torch.sum(Q)
  Q /= sum_Q
  for it in range(sinkhorn_iterations):
    sum_of_rows = torch.sum(Q, dim=1, keepdim=True)
    Q /= sum_of_rows
    Q /= K
    Q /= torch.sum(Q, dim=0, keepdim=True)
    Q /= B
  Q *= B
  return Q.t()


def swav_official(output, bs, temperature, epsilon, sinkhorn_iterations, nmb_crops=(2,),
                  crops_for_assign=(0, 1)):
  loss = 0
  for i, crop_id in enumerate(crops_for_assign):
    with torch.no_grad():
      out = output[bs * crop_id: bs * (crop_id + 1)].detach()
      q = distributed_sinkhorn(out, epsilon, sinkhorn_iterations)[-bs:]
    subloss = 0
    for v in np.delete(np.arange(np.sum(nmb_crops)), crop_id):
      x = output[bs * v: bs * (v + 1)] / temperature
      subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
    loss += subloss / (np.sum(nmb_crops) - 1)
  loss /= len(crops_for_assign)
  return loss


def _pairs(rows, dim, seed):
  """Two views' outputs: nearby vectors, so positives are more alike than negatives."""
  rng = np.random.default_rng(seed)
  base_rows = rng.normal(size=(rows, dim))
  return [base_rows + 0.5 * rng.normal(size=(rows, dim)) for _ in range(2)]


def _torch(*arrays):
  return [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]


def _assert_same(ours_fn, official_fn, arrays, gradient_of):
  """Our loss and its gradients with respect to arrays[i] for i in gradient_of, against the
  official ones."""
  with jax.enable_x64(True):
    inputs = [jnp.asarray(a, jnp.float64) for a in arrays]
    value, grads = jax.value_and_grad(ours_fn, argnums=tuple(gradient_of))(*inputs)
  tensors = _torch(*arrays)
  expected = official_fn(*tensors)
  expected.backward()
  np.testing.assert_allclose(float(value), expected.item(), rtol=RTOL)
  for i, grad in zip(gradient_of, grads):
    official_grad = tensors[i].grad
    official_grad = np.zeros_like(arrays[i]) if official_grad is None else official_grad.numpy()
    np.testing.assert_allclose(grad, official_grad, rtol=1e-8, atol=1e-14,
                               err_msg=f'gradient of input {i}')
  return float(value)


def test_simsiam_loss_is_main_simsiams_with_z_detached():
  z1, z2 = _pairs(6, 8, seed=0)
  p1, p2 = _pairs(6, 8, seed=1)
  _assert_same(lambda p1, p2, z1, z2: losses.simsiam_loss([{'p1': p1, 'p2': p2, 'z1': z1,
                                                             'z2': z2}]),
               simsiam_official, [p1, p2, z1, z2], gradient_of=(0, 1, 2, 3))


@pytest.mark.parametrize('temperature', [0.1, 0.5])
def test_nt_xent_is_simclrs_add_contrastive_loss(temperature):
  z1, z2 = _pairs(6, 5, seed=2)
  _assert_same(lambda z1, z2: losses.nt_xent(z1, z2, temperature),
               lambda z1, z2: add_contrastive_loss(torch.cat([z1, z2]), temperature=temperature),
               [z1, z2], gradient_of=(0, 1))


def test_nt_xent_by_hand_on_orthogonal_views():
  """Each view's positive at cosine 1, its 2N - 2 negatives at 0: each of the two cross
  entropies is log(1 + (2N - 2) e^{-1/t}) + 1/t - 1/t, summed."""
  eye = np.eye(4, dtype=np.float32)
  np.testing.assert_allclose(losses.nt_xent(eye, 3 * eye, 0.5),
                             2 * np.log(1 + 6 * np.exp(-2.0)), rtol=1e-6)


@pytest.mark.parametrize('symmetric', [False, True])
def test_moco_loss_is_the_builders_logits_and_cross_entropy(symmetric):
  """Asymmetric: MoCo v2's loss. Symmetric (SimSiam's Table 4 runs MoCo v2 so): the mean of
  the official loss in both directions."""
  (q1, q2), (k1, k2) = _pairs(5, 6, seed=3), _pairs(5, 6, seed=4)
  queue = np.random.default_rng(5).normal(size=(12, 6))
  queue /= np.linalg.norm(queue, axis=1, keepdims=True)  # Stored normalised, as keys are.
  config = ml_collections.ConfigDict({'moco_v2': {'temperature': 0.2, 'symmetric': symmetric}})

  def official(q1, q2, k1, k2, queue):
    queue_columns = queue.T  # builder.py's buffer is [dim, K].
    loss = moco_official(q1, k2, queue_columns, 0.2)
    return (loss + moco_official(q2, k1, queue_columns, 0.2)) / 2 if symmetric else loss

  _assert_same(lambda q1, q2, k1, k2, queue: moco_v2.contrastive_loss(
      (q1, q2), (k1, k2), queue, config), official, [q1, q2, k1, k2, queue],
               gradient_of=(0, 1))


def test_byol_loss_is_the_experiments_repr_loss():
  p1, p2 = _pairs(5, 7, seed=6)
  z1, z2 = _pairs(5, 7, seed=7)
  value = _assert_same(byol.byol_loss, byol_official, [p1, p2, 3 * z1, 0.2 * z2],
                       gradient_of=(0, 1, 2, 3))
  assert value > 0.1  # Far from the trivial 0 of p = z.


@pytest.mark.parametrize('iterations', [3, 10])
def test_swav_loss_is_main_swavs_with_sinkhorn_codes_as_constants(iterations):
  config = ml_collections.ConfigDict({'swav': base.get_swav_config()})
  config.swav.sinkhorn_iterations = iterations
  s1, s2 = (np.clip(s / 3, -1, 1) for s in _pairs(8, 4, seed=8))  # Cosines to 4 prototypes.
  _assert_same(lambda s1, s2: swav.swav_loss(s1, s2, config),
               lambda s1, s2: swav_official(torch.cat([s1, s2]), 8, config.swav.temperature,
                                            config.swav.epsilon, iterations),
               [s1, s2], gradient_of=(0, 1))


def test_sinkhorn_is_distributed_sinkhorn_and_equipartitions_when_converged():
  scores = np.random.default_rng(2).uniform(-1, 1, size=(12, 4))
  with jax.enable_x64(True):
    codes = np.asarray(losses.sinkhorn(jnp.asarray(scores), 0.05, 50))
  np.testing.assert_allclose(codes, distributed_sinkhorn(torch.tensor(scores), 0.05, 50).numpy(),
                             rtol=1e-10)
  np.testing.assert_allclose(codes.sum(axis=1), 1, rtol=1e-10)
  np.testing.assert_allclose(codes.sum(axis=0), 12 / 4, rtol=1e-3)  # B / K per prototype.
