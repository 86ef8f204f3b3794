"""Each method's large-batch optimizer (config.optim.optimizer) against a transcription of
its official source, step by step, while the lr changes as in a warmup and a decay.

The transcriptions keep their source's names and order of operations; each sees the test's
layers under the names its framework gives them (TF's `dense/bias`, haiku's `linear/b`), so
that its own name filter decides what is decayed and adapted:
- SimCLR: google-research/simclr lars_optimizer.py, LARSOptimizer.apply_gradients
  (classic_momentum=True, no Nesterov), exclude_from_weight_decay=['batch_normalization',
  'bias'] as tf2/model.py build_optimizer passes it (the layer adaptation inherits it);
- BYOL: deepmind-research byol/utils/optimizers.py, lars(): add_weight_decay, scale_by_lars,
  optax.scale(-learning_rate), with exclude_bias_and_norm as byol_experiment.py passes it;
- SwAV: main_swav.py's LARC(SGD(lr, momentum=0.9, weight_decay=wd), trust_coefficient=0.001,
  clip=False), in torch (apex LARC transcribed in torch_reference.py).
"""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from simsiam_jax import optimizer

# Per step: a warmup, then a decay. With a changing lr the three optimizers differ.
LEARNING_RATES = (0.5, 1.0, 1.5, 1.2, 0.6, 0.1)
WEIGHT_DECAY = 0.05
MOMENTUM = 0.9
TRUST = 0.001

# Our name -> (shape, its TF (SimCLR) name, its haiku (BYOL) path).
LAYERS = {
    ('conv', 'kernel'): ((3, 3, 2, 4), 'conv2d/kernel', ('conv2_d', 'w')),
    ('dense', 'kernel'): ((4, 3), 'dense/kernel', ('linear', 'w')),
    ('dense', 'bias'): ((3,), 'dense/bias', ('linear', 'b')),
    ('batch_norm', 'scale'): ((4,), 'batch_normalization/gamma', ('batch_norm', 'scale')),
    ('batch_norm', 'bias'): ((4,), 'batch_normalization/beta', ('batch_norm', 'offset')),
}


def _initial_params_and_gradients():
  rng = np.random.default_rng(0)
  params = {name: rng.normal(size=shape) for name, (shape, _, _) in LAYERS.items()}
  # Gradients much smaller than the parameters for some layers, larger for others, so the
  # trust ratio is far from 1 both ways.
  grads = [{name: rng.normal(size=shape) * (0.01 if name[1] == 'kernel' else 3.0)
            for name, (shape, _, _) in LAYERS.items()} for _ in LEARNING_RATES]
  return params, grads


class SimclrLars:
  """lars_optimizer.py's LARSOptimizer, classic_momentum=True, use_nesterov=False."""

  def __init__(self, momentum, weight_decay, exclude_from_weight_decay, eeta):
    self.momentum, self.weight_decay, self.eeta = momentum, weight_decay, eeta
    self.exclude_from_weight_decay = exclude_from_weight_decay
    self.exclude_from_layer_adaptation = exclude_from_weight_decay
    self.slots = {}

  def apply_gradients(self, learning_rate, grads_and_vars):
    """[(grad, (param_name, param))] -> {param_name: next_param}."""
    assignments = {}
    for grad, (param_name, param) in grads_and_vars:
      v = self.slots.get(param_name, np.zeros_like(param))
      if self._use_weight_decay(param_name):
        grad = grad + self.weight_decay * param
      trust_ratio = 1.0
      if self._do_layer_adaptation(param_name):
        w_norm, g_norm = np.linalg.norm(param), np.linalg.norm(grad)
        trust_ratio = np.where(w_norm > 0, np.where(g_norm > 0, self.eeta * w_norm / g_norm,
                                                    1.0), 1.0)
      scaled_lr = learning_rate * trust_ratio
      next_v = self.momentum * v + scaled_lr * grad
      update = next_v
      assignments[param_name] = param - update
      self.slots[param_name] = next_v
    return assignments

  def _use_weight_decay(self, param_name):
    if not self.weight_decay:
      return False
    return not any(re.search(r, param_name) for r in self.exclude_from_weight_decay)

  def _do_layer_adaptation(self, param_name):
    return not any(re.search(r, param_name) for r in self.exclude_from_layer_adaptation)


def exclude_bias_and_norm(path, val):
  """byol/utils/optimizers.py."""
  del val
  if path[-1] == 'b' or 'norm' in path[-2]:
    return False
  return True


def byol_lars_step(params, grads, mu, learning_rate, *, weight_decay, momentum, eta,
                   filter_fn=exclude_bias_and_norm):
  """One update of optimizers.lars(learning_rate, ...) and optax.apply_updates, per leaf:
  add_weight_decay, scale_by_lars (lars_adaptation, then mu = momentum * mu + t), and
  optax.scale(-learning_rate)."""
  new_params, new_mu = {}, {}
  for path, g in grads.items():
    p = params[path]
    if filter_fn(path, p):
      g = g + weight_decay * p
    param_norm, update_norm = np.linalg.norm(p), np.linalg.norm(g)
    if filter_fn(path, p):
      g = g * np.where(param_norm > 0.,
                       np.where(update_norm > 0, (eta * param_norm / update_norm), 1.0), 1.0)
    new_mu[path] = momentum * mu[path] + g
    new_params[path] = p + -learning_rate * new_mu[path]
  return new_params, new_mu


def simclr_trajectory(params, grads):
  lars = SimclrLars(MOMENTUM, WEIGHT_DECAY, ['batch_normalization', 'bias'], TRUST)
  tf_names = {name: tf_name for name, (_, tf_name, _) in LAYERS.items()}
  trajectory = []
  for lr, step_grads in zip(LEARNING_RATES, grads):
    assigned = lars.apply_gradients(
        lr, [(step_grads[name], (tf_names[name], params[name])) for name in LAYERS])
    params = {name: assigned[tf_names[name]] for name in LAYERS}
    trajectory.append(params)
  return trajectory


def byol_trajectory(params, grads):
  paths = {name: path for name, (_, _, path) in LAYERS.items()}
  hk_params = {paths[name]: value for name, value in params.items()}
  mu = {path: np.zeros_like(value) for path, value in hk_params.items()}
  trajectory = []
  for lr, step_grads in zip(LEARNING_RATES, grads):
    hk_params, mu = byol_lars_step(hk_params, {paths[n]: g for n, g in step_grads.items()}, mu,
                                   lr, weight_decay=WEIGHT_DECAY, momentum=MOMENTUM, eta=TRUST)
    trajectory.append({name: hk_params[paths[name]] for name in LAYERS})
  return trajectory


def swav_trajectory(params, grads):
  torch = pytest.importorskip('torch')
  import torch_reference as ref
  tensors = {name: torch.nn.Parameter(torch.from_numpy(value.copy())) for name, value in
             params.items()}
  sgd = torch.optim.SGD(list(tensors.values()), lr=LEARNING_RATES[0], momentum=MOMENTUM,
                        weight_decay=WEIGHT_DECAY)
  larc = ref.LARC(optimizer=sgd, trust_coefficient=TRUST, clip=False)
  trajectory = []
  for lr, step_grads in zip(LEARNING_RATES, grads):
    for param_group in larc.param_groups:  # main_swav.py's train(): the lr of the iteration.
      param_group['lr'] = lr
    for name, tensor in tensors.items():
      tensor.grad = torch.from_numpy(step_grads[name].copy())
    larc.step()
    trajectory.append({name: t.detach().numpy().copy() for name, t in tensors.items()})
  return trajectory


OFFICIAL = {'simclr_lars': simclr_trajectory, 'byol_lars': byol_trajectory,
            'larc': swav_trajectory}


def _tree(flat):
  """{(layer, leaf): array} -> {layer: {leaf: jax array}}, the shape of a params tree."""
  tree = {}
  for (layer, leaf), value in flat.items():
    tree.setdefault(layer, {})[leaf] = jnp.asarray(value)
  return tree


def our_trajectory(name, params, grads, learning_rates=LEARNING_RATES):
  optim = ml_collections.ConfigDict({'optimizer': name, 'weight_decay': WEIGHT_DECAY,
                                     'momentum': MOMENTUM, 'lars_trust_coefficient': TRUST})
  with jax.enable_x64(True):
    tx = optimizer.pretraining_optimizer(
        optim, lambda count: jnp.asarray(learning_rates, jnp.float64)[count])
    params_tree = _tree(params)
    state = tx.init(params_tree)
    trajectory = []
    for step_grads in grads:
      updates, state = tx.update(_tree(step_grads), state, params_tree)
      params_tree = jax.tree.map(lambda p, u: p + u, params_tree, updates)
      trajectory.append({name: np.asarray(params_tree[name[0]][name[1]]) for name in LAYERS})
  return trajectory


@pytest.mark.parametrize('name', sorted(OFFICIAL))
def test_each_step_is_the_official_optimizers_while_the_lr_changes(name):
  params, grads = _initial_params_and_gradients()
  official = OFFICIAL[name](params, grads)
  ours = our_trajectory(name, params, grads)
  for step, (expected, got) in enumerate(zip(official, ours)):
    for layer in LAYERS:
      # Relative to how far the layer has moved, so that a slip in a small update shows.
      moved = np.linalg.norm(expected[layer] - params[layer])
      assert moved > 0, (step, layer)
      np.testing.assert_allclose(got[layer] - params[layer], expected[layer] - params[layer],
                                 rtol=1e-9, atol=1e-12 * moved, err_msg=f'step {step} {layer}')


def test_simclrs_and_byols_lars_agree_at_a_constant_lr_and_differ_when_it_changes():
  """Where the lr is applied relative to the momentum matters only when the lr changes."""
  params, grads = _initial_params_and_gradients()
  constant = [0.7] * len(LEARNING_RATES)
  simclr, byol = (our_trajectory(n, params, grads, constant)[-1]
                  for n in ('simclr_lars', 'byol_lars'))
  for layer in LAYERS:
    np.testing.assert_allclose(simclr[layer], byol[layer], rtol=1e-12)
  simclr, byol = (our_trajectory(n, params, grads)[-1] for n in ('simclr_lars', 'byol_lars'))
  kernel = ('dense', 'kernel')
  assert np.linalg.norm(simclr[kernel] - byol[kernel]) > 0.1 * np.linalg.norm(
      simclr[kernel] - params[kernel])


def test_larc_adapts_and_decays_biases_and_batch_norm_where_the_lars_do_not():
  params, grads = _initial_params_and_gradients()
  larc, lars = (our_trajectory(n, params, grads)[0] for n in ('larc', 'simclr_lars'))
  bias = ('dense', 'bias')
  # LARS: a plain SGD step of the bias; LARC: the trust ratio shrinks it by orders.
  np.testing.assert_allclose(lars[bias] - params[bias], -LEARNING_RATES[0] * grads[0][bias],
                             rtol=1e-12)
  assert np.linalg.norm(larc[bias] - params[bias]) < 0.01 * np.linalg.norm(
      lars[bias] - params[bias])
