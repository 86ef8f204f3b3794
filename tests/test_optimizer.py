import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from simsiam_jax import methods, optimizer
from simsiam_jax.methods import simsiam
from simsiam_jax.models import create_model


def _initial_lr(config):
  return optimizer.initial_learning_rate(config.optim, config.batch_size)


def _schedule(config, steps_per_epoch):
  return optimizer.cosine_schedule(config.optim, batch_size=config.batch_size,
                                   num_epochs=config.num_epochs, steps_per_epoch=steps_per_epoch)


def _params():
  return {'backbone': {'w': jnp.zeros(3)}, 'projector': {'w': jnp.zeros(2)},
          'predictor': {'w': jnp.zeros(4)}}


def _run(config, steps_per_epoch, num_steps, grad_value=1.0):
  """Applies the optimizer with a constant gradient; returns each step's updates."""
  tx = simsiam.create_optimizer(config, steps_per_epoch)
  params = _params()
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, grad_value), params)
  step = jax.jit(tx.update)
  history = []
  for _ in range(num_steps):
    updates, state = step(grads, state, params)
    history.append(jax.tree.map(lambda u: float(u[0]), updates))
  return history


def test_predictor_lr_stays_constant_while_encoder_lr_decays(tiny_config):
  config = tiny_config
  config.optim.momentum = 0.0  # So that an update is exactly -lr * gradient.
  config.optim.weight_decay = 0.0
  config.num_epochs = 10
  steps_per_epoch = 20
  history = _run(config, steps_per_epoch, num_steps=190)
  init_lr = config.optim.base_lr * config.batch_size / 256
  first, late = history[0], history[-1]
  for name in ('backbone', 'projector', 'predictor'):
    np.testing.assert_allclose(-first[name]['w'], init_lr, rtol=1e-6)
  np.testing.assert_allclose(-late['predictor']['w'], init_lr, rtol=1e-6)
  expected_encoder_lr = init_lr * 0.5 * (1 + np.cos(np.pi * 189 / 200))
  for name in ('backbone', 'projector'):
    np.testing.assert_allclose(-late[name]['w'], expected_encoder_lr, rtol=1e-4)
  assert -late['backbone']['w'] < 0.01 * init_lr


def test_predictor_lr_decays_too_when_not_fixed(tiny_config):
  tiny_config.optim.momentum = 0.0
  tiny_config.optim.weight_decay = 0.0
  tiny_config.optim.fixed_predictor_lr = False
  history = _run(tiny_config, steps_per_epoch=10, num_steps=15)
  np.testing.assert_allclose(history[-1]['predictor']['w'], history[-1]['backbone']['w'])
  assert history[-1]['predictor']['w'] > history[0]['predictor']['w']  # Smaller step.


def test_sgd_matches_torch_sgd_with_weight_decay_and_momentum(tiny_config):
  """torch.optim.SGD: g += wd*p; buf = m*buf + g; p -= lr*buf (every parameter decayed)."""
  config = tiny_config
  config.num_epochs = 1
  config.optim.weight_decay = 0.1
  steps_per_epoch = 5
  tx = simsiam.create_optimizer(config, steps_per_epoch)
  params = {'backbone': {'w': jnp.array([1.0, -2.0])}, 'predictor': {'w': jnp.array([0.5])}}
  state = tx.init(params)
  grads = {'backbone': {'w': jnp.array([0.3, 0.1])}, 'predictor': {'w': jnp.array([-0.2])}}
  init_lr = config.optim.base_lr * config.batch_size / 256
  ref = {k: np.asarray(v['w'], np.float64) for k, v in params.items()}
  buf = {k: np.zeros_like(v) for k, v in ref.items()}
  for t in range(steps_per_epoch):
    updates, state = tx.update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    lrs = {'backbone': init_lr * 0.5 * (1 + np.cos(np.pi * t / steps_per_epoch)),
           'predictor': init_lr}
    for k in ref:
      buf[k] = (config.optim.momentum * buf[k] + np.asarray(grads[k]['w']) +
                config.optim.weight_decay * ref[k])
      ref[k] = ref[k] - lrs[k] * buf[k]
  for k in ref:
    np.testing.assert_allclose(params[k]['w'], ref[k], rtol=1e-5)


def test_linear_warmup_then_cosine(tiny_config):
  tiny_config.num_epochs = 10
  tiny_config.optim.warmup_epochs = 2
  schedule = _schedule(tiny_config, steps_per_epoch=10)
  init_lr = _initial_lr(tiny_config)
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(schedule(10), init_lr / 2, rtol=1e-6)
  np.testing.assert_allclose(schedule(20), init_lr, rtol=1e-6)
  np.testing.assert_allclose(schedule(60), init_lr * 0.5, rtol=1e-5)


@pytest.mark.parametrize('batch_size,expected', [(256, 0.05), (512, 0.1), (4096, 0.8)])
def test_linear_scaling_rule(tiny_config, batch_size, expected):
  tiny_config.optim.base_lr = 0.05
  tiny_config.batch_size = batch_size
  np.testing.assert_allclose(_initial_lr(tiny_config), expected)


def test_cosine_per_epoch_is_the_official_adjust_learning_rate(tiny_config):
  """main_simsiam.py: lr = init_lr * 0.5 * (1 + cos(pi * epoch / epochs)), set at the start of
  each epoch; the per-step schedule moves within the epoch instead."""
  tiny_config.num_epochs = 5
  steps_per_epoch = 7
  init_lr = _initial_lr(tiny_config)
  tiny_config.optim.lr_schedule = 'cosine_per_epoch'
  staircase = _schedule(tiny_config, steps_per_epoch)
  tiny_config.optim.lr_schedule = 'cosine'
  per_step = _schedule(tiny_config, steps_per_epoch)
  for step in range(5 * steps_per_epoch):
    epoch = step // steps_per_epoch
    np.testing.assert_allclose(staircase(step),
                               init_lr * 0.5 * (1 + np.cos(np.pi * epoch / 5)), rtol=1e-6)
    np.testing.assert_allclose(per_step(step), init_lr * 0.5 * (
        1 + np.cos(np.pi * step / (5 * steps_per_epoch))), rtol=1e-5, atol=1e-9)
  assert float(staircase(9)) != float(per_step(9))


def test_weight_decay_reaches_every_parameter_of_the_real_model(tiny_config):
  """The official SGD(weight_decay=1e-4) decays every parameter, biases and BatchNorm
  included: with zero gradients the first update of every leaf is -lr * wd * p."""
  model = create_model(tiny_config.model)
  images = jnp.zeros((2, 16, 16, 3))
  params = model.init(jax.random.key(0), images, images, train=False)['params']
  # Non-zero everywhere (zero-initialised biases and BN scales would hide a missing decay).
  params = jax.tree.map(lambda p: p + 0.5, params)
  tx = simsiam.create_optimizer(tiny_config, steps_per_epoch=4)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  lr, wd = _initial_lr(tiny_config), tiny_config.optim.weight_decay
  assert wd == 1e-4
  flat = traverse_util.flatten_dict(updates, sep='/')
  assert any(name.endswith('bias') for name in flat)
  for name, update in flat.items():
    expected = -lr * wd * traverse_util.flatten_dict(params, sep='/')[name]
    np.testing.assert_allclose(update, expected, rtol=1e-5, err_msg=name)
