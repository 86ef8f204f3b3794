"""SimCLR (Chen et al. 2020; google-research/simclr), as in SimSiam's Table 4.

The encoder (backbone + 2-layer projector with BatchNorm, no predictor) embeds both views;
NT-Xent contrasts each view with the other view of its image against the other 2N - 2
views of the global batch. The step is one jit over global arrays, so the negatives come
from every device and host, as tpu_cross_replica_concat gathers them in the official code.
"""

import jax
import ml_collections

from simsiam_jax import config_validation, losses
from simsiam_jax.methods import common
from simsiam_jax.train_state import TrainState, create_train_state as _create

TITLE = 'SimCLR'
create_optimizer = common.create_optimizer


def validate(config: ml_collections.ConfigDict):
  config_validation.require_positive(config, 'simclr.temperature')


def create_network(config: ml_collections.ConfigDict):
  # simclr's projection head: Linear-BN-ReLU-Linear-BN (the last BN without bias).
  return common.create_network(config, head_batch_norm='default', predictor=False)


def create_train_state(rng, config: ml_collections.ConfigDict, tx, mesh,
                       num_train_examples: int) -> TrainState:
  del num_train_examples
  return _create(rng, config, create_network(config), tx, mesh)


def loss_fn(params, batch_stats, apply_fn, views, config: ml_collections.ConfigDict):
  (z1, z2), batch_stats = common.encode_views(apply_fn, params, batch_stats, views)
  return losses.nt_xent(z1, z2, config.simclr.temperature), ((z1, z2), batch_stats)


def train_step_fn(config: ml_collections.ConfigDict, steps_per_epoch: int):
  def step(state: TrainState, batch):
    views = common.normalized_views(batch, config)
    (loss, (projections, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, state.apply_fn, views, config)
    metrics = {'loss': loss,
               **common.projection_metrics(projections, state, config, steps_per_epoch)}
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), metrics

  return step
