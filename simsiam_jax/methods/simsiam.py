"""SimSiam (Chen & He 2020) and the expectation-maximisation variants of its Sec. 5.

The paper reads SimSiam as an alternation: eta_x <- F_theta(T'(x)), then theta <- one SGD
step on D(h(F_theta(T(x))), eta_x). `config.simsiam.target` chooses where the z-targets
eta come from:

- 'online': the network being trained, under stop-gradient: SimSiam itself.
- 'k_step': a copy of the encoder (backbone + projector) that is refreshed from the online
  weights every `target_refresh_steps` steps (or `target_refresh_epochs` epochs), frozen in
  between; the paper's k-step alternation (Sec. 5.2: 1-step 68.1, 10-step 68.7, 100-step
  68.9, 1-epoch 67.0% ImageNet linear top-1). The copy runs in train mode, like the online
  encoder, so with k = 1 its targets are SimSiam's.
- 'memory_bank': a per-image moving average eta_x <- m * eta_x + (1 - m) * F_theta(T'(x)),
  m = `bank_momentum` (0.8 in the paper, which trains it without predictor: 55.0%). The
  bank is one row per training image, sharded over the mesh like a batch.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from simsiam_jax import config_validation, losses, optimizer
from simsiam_jax.methods import common
from simsiam_jax.methods.common import TARGET_PARAMS
from simsiam_jax.models import create_model
from simsiam_jax.train_state import TrainState, compute_dtype, create_train_state as _create

TITLE = 'SimSiam'
TARGETS = ('online', 'k_step', 'memory_bank')
MEMORY_BANK = 'memory_bank'
# Whether a bank row holds an average yet: a first visit stores F_theta(T'(x)) itself.
BANK_FILLED = 'bank_filled'


def validate(config: ml_collections.ConfigDict):
  em = config.simsiam
  config_validation.require_choice(config, 'simsiam.target', TARGETS)
  if em.target == 'k_step':
    config_validation.require_positive_int(config, 'simsiam.target_refresh_steps')
    config_validation.require_in(config, 'simsiam.target_refresh_epochs', 0, float('inf'))
  if em.target == 'memory_bank':
    config_validation.require_momentum(config, 'simsiam.bank_momentum')
    config_validation.require(
        config.loss_symmetry == 'symmetric', 'config.loss_symmetry', config.loss_symmetry,
        "the memory bank gives every view of an image the same target; use 'symmetric'")
    config_validation.require(
        config.data.source != 'tfds', 'config.data.source', config.data.source,
        "the memory bank needs each example's index, which the 'synthetic' and 'folder' "
        'sources provide')
  if em.target != 'online':
    config_validation.require(config.stop_gradient, 'config.stop_gradient',
                              config.stop_gradient,
                              f'the {em.target!r} targets never carry a gradient')


def create_network(config: ml_collections.ConfigDict):
  """SimSiam's network with config.model's heads (the ablations' settings included)."""
  return create_model(config.model, dtype=compute_dtype(config))


# The parameters a k-step target copies: the encoder f, without the predictor.
encoder_params = common.encoder_part


def target_refresh_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """k of the k-step alternation, in steps."""
  epochs = config.simsiam.target_refresh_epochs
  return max(int(round(epochs * steps_per_epoch)), 1) if epochs else (
      config.simsiam.target_refresh_steps)


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.GradientTransformation:
  # A 'fixed_random' predictor stays at its initialisation (paper Table 1b).
  return optimizer.create_optimizer(
      config.optim, batch_size=config.batch_size, num_epochs=config.num_epochs,
      steps_per_epoch=steps_per_epoch, frozen_predictor=config.model.predictor == 'fixed_random')


def bank_rows(num_train_examples: int, mesh) -> int:
  """One row per training image, padded to split evenly over the devices."""
  return -(-num_train_examples // mesh.devices.size) * mesh.devices.size


def create_train_state(rng, config: ml_collections.ConfigDict, tx: optax.GradientTransformation,
                       mesh, num_train_examples: int) -> TrainState:
  model = create_network(config)
  target = config.simsiam.target

  def init_method_state(rng, variables):
    del rng
    if target == 'k_step':
      return {TARGET_PARAMS: encoder_params(variables['params'])}
    if target == 'memory_bank':
      rows = bank_rows(num_train_examples, mesh)
      return {MEMORY_BANK: jnp.zeros((rows, config.model.projector_dim), jnp.float32),
              BANK_FILLED: jnp.zeros((rows,), bool)}
    return {}

  return _create(rng, config, model, tx, mesh, init_method_state=init_method_state,
                 row_sharded=(MEMORY_BANK, BANK_FILLED))


def normalized_view_pairs(batch, config: ml_collections.ConfigDict) -> list[tuple]:
  """[(view1, view2), ...] of a batch of uint8 views, normalised on the device.

  The batch holds 'view1', 'view2' (and 'view3', 'view4' for two pairs per image).
  """
  views = common.normalized_views(batch, config,
                                  2 * losses.num_view_pairs(config.loss_symmetry))
  return list(zip(views[::2], views[1::2]))


def forward(params, batch_stats, apply_fn, pairs):
  """(per-pair outputs {'z1', 'z2', 'p1', 'p2'}, new batch_stats) in train mode."""
  outputs = []
  for view1, view2 in pairs:
    pair_outputs, mutated = apply_fn({'params': params, 'batch_stats': batch_stats},
                                     view1, view2, train=True, mutable=['batch_stats'])
    batch_stats = mutated['batch_stats']
    outputs.append(pair_outputs)
  return outputs, batch_stats


def loss_fn(params, batch_stats, apply_fn, pairs, config: ml_collections.ConfigDict):
  """(loss, (per-pair outputs, new batch_stats)) of the model in train mode on view pairs."""
  outputs, batch_stats = forward(params, batch_stats, apply_fn, pairs)
  return pair_loss(outputs, config), (outputs, batch_stats)


def pair_loss(outputs, config: ml_collections.ConfigDict):
  return losses.simsiam_loss(outputs, symmetric=config.loss_symmetry == 'symmetric',
                             stop_gradient=config.stop_gradient, similarity=config.similarity)


def target_projections(state: TrainState, pairs):
  """z of each view by the k-step target encoder, in train mode like the online one (its
  BatchNorm statistics of the batch; its running averages are not kept)."""
  params = state.method_state[TARGET_PARAMS]
  projections = []
  for view1, view2 in pairs:
    z1, z2 = (state.apply_fn({'params': params, 'batch_stats': state.batch_stats}, view,
                             train=True, method='encode', mutable=['batch_stats'])[0]
              for view in (view1, view2))
    projections.append({'z1': jax.lax.stop_gradient(z1), 'z2': jax.lax.stop_gradient(z2)})
  return projections


def bank_targets(state: TrainState, outputs, indices, momentum: float):
  """(eta_x of the batch's images after this step's update, the updated method state).

  F_theta(T'(x)) is the mean of the image's view projections; a row visited for the first
  time takes it as is.
  """
  bank, filled = state.method_state[MEMORY_BANK], state.method_state[BANK_FILLED]
  views = [o[z] for o in outputs for z in ('z1', 'z2')]
  current = jax.lax.stop_gradient(sum(v.astype(jnp.float32) for v in views) / len(views))
  eta = jnp.where(filled[indices][:, None], momentum * bank[indices] + (1 - momentum) * current,
                  current)
  return eta, {MEMORY_BANK: bank.at[indices].set(eta), BANK_FILLED: filled.at[indices].set(True)}


def train_step_fn(config: ml_collections.ConfigDict, steps_per_epoch: int):
  """step(state, batch) -> (state, metrics): one SGD step on a global batch of view pairs."""
  lr_schedule = common.encoder_schedule(config, steps_per_epoch)
  target = config.simsiam.target
  refresh_every = target_refresh_steps(config, steps_per_epoch)
  similarity = losses.SIMILARITIES[config.similarity]

  def step(state: TrainState, batch):
    pairs = normalized_view_pairs(batch, config)
    targets = target_projections(state, pairs) if target == 'k_step' else None

    def loss_and_updates(params):
      outputs, batch_stats = forward(params, state.batch_stats, state.apply_fn, pairs)
      method_state = state.method_state
      if target == 'online':
        loss = pair_loss(outputs, config)
      elif target == 'k_step':
        loss = pair_loss([{**o, **t} for o, t in zip(outputs, targets)], config)
      else:
        eta, method_state = bank_targets(state, outputs, batch['index'],
                                         config.simsiam.bank_momentum)
        predictions = [o[p] for o in outputs for p in ('p1', 'p2')]
        loss = sum(similarity(p, eta) for p in predictions) / len(predictions)
      return loss, (outputs, batch_stats, method_state)

    (loss, (outputs, batch_stats, method_state)), grads = jax.value_and_grad(
        loss_and_updates, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats,
                                      method_state=method_state)
    if target == 'k_step':
      refresh = new_state.step % refresh_every == 0
      new_state = new_state.replace(method_state={TARGET_PARAMS: jax.tree.map(
          lambda online, old: jnp.where(refresh, online, old),
          encoder_params(new_state.params),
          state.method_state[TARGET_PARAMS])})

    def mean_std(name):
      values = [losses.normalized_std(o[f'{name}{v}']) for o in outputs for v in (1, 2)]
      return sum(values) / len(values)

    metrics = {'loss': loss, 'learning_rate': lr_schedule(state.step),
               'z_std': mean_std('z'), 'p_std': mean_std('p')}
    return new_state, metrics

  return step
