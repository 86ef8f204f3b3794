"""BYOL (Grill et al. 2020; deepmind-research/byol), as in SimSiam's Table 4.

The online network (backbone, projector, predictor; BYOL's MLPs are Linear-BN-ReLU-Linear)
predicts the target network's projection of the other view; the target is an exponential
moving average of the online encoder, target <- target + (1 - tau) (online - target) after
each optimizer step, with tau cosine-scheduled from `byol.tau_base` to 1 over the run
(byol_experiment.py, schedules.target_ema). The target computes its projections in train
mode and keeps its own BatchNorm statistics. SimSiam is this without the moving average.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections

from simsiam_jax import config_validation, losses
from simsiam_jax.methods import common
from simsiam_jax.train_state import TrainState, create_train_state as _create

TITLE = 'BYOL'
create_optimizer = common.create_optimizer


def validate(config: ml_collections.ConfigDict):
  config_validation.require_in(config, 'byol.tau_base', 0, 1)


def create_network(config: ml_collections.ConfigDict):
  return common.create_network(config, head_batch_norm='hidden', predictor=True)


def create_train_state(rng, config: ml_collections.ConfigDict, tx, mesh,
                       num_train_examples: int) -> TrainState:
  del num_train_examples
  return _create(rng, config, create_network(config), tx, mesh,
                 init_method_state=lambda rng, variables: common.init_target(variables))


def target_decay(step, tau_base: float, total_steps: int):
  """tau of the update after optimizer step `step` (0 for the first): 1 - (1 - tau_base)
  (cos(pi step / total) + 1) / 2."""
  progress = jnp.minimum(step, total_steps) / total_steps
  return 1 - (1 - tau_base) * (jnp.cos(math.pi * progress) + 1) / 2


def byol_loss(p1, p2, z1_target, z2_target):
  """Each view's prediction regresses the target's projection of the other view; the two
  batch means summed (byol_experiment.py loss_fn's repr_loss). No gradient reaches the
  targets, whatever computed them."""
  z1_target, z2_target = jax.lax.stop_gradient((z1_target, z2_target))
  return losses.byol_regression(p1, z2_target) + losses.byol_regression(p2, z1_target)


def loss_fn(params, batch_stats, apply_fn, views, targets):
  """(byol_loss of the online predictions and the target projections, (outputs,
  batch_stats))."""
  outputs, mutated = apply_fn({'params': params, 'batch_stats': batch_stats}, *views,
                              train=True, mutable=['batch_stats'])
  loss = byol_loss(outputs['p1'], outputs['p2'], *targets)
  return loss, (outputs, mutated['batch_stats'])


def train_step_fn(config: ml_collections.ConfigDict, steps_per_epoch: int):
  total_steps = common.total_steps(config, steps_per_epoch)

  def step(state: TrainState, batch):
    views = common.normalized_views(batch, config)
    targets, method_state = common.target_projections(state, views)
    (loss, (outputs, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, state.apply_fn, views, targets)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    tau = target_decay(state.step, config.byol.tau_base, total_steps)
    method_state[common.TARGET_PARAMS] = common.moving_average(
        method_state[common.TARGET_PARAMS], common.encoder_part(new_state.params), tau)
    metrics = {'loss': loss, 'tau': tau,
               **common.projection_metrics([outputs['z1'], outputs['z2']], state, config,
                                           steps_per_epoch)}
    return new_state.replace(method_state=method_state), metrics

  return step
