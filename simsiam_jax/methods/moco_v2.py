"""MoCo v2 (Chen et al. 2020; facebookresearch/moco), as in SimSiam's Table 4.

A query encoder (backbone + MoCo v2's MLP head, Linear-ReLU-Linear, no BatchNorm) is trained
to pick its key, the momentum key encoder's projection of the other view, out of a queue of
keys of earlier batches (builder.py). Before each step the key encoder moves towards the
query encoder, key <- m key + (1 - m) query, m = `moco_v2.momentum`; after it the step's
keys replace the oldest in the queue. The queue is split by rows over the mesh, checkpointed,
and enqueued with the keys of the global batch, as concat_all_gather does.

Differences from builder.py, which SimSiam's Table 4 shares:
- `moco_v2.symmetric` (the default, as Table 4's reproduction): each view is a query of the
  other's key, the two losses are averaged and both views' keys are enqueued. False is the
  original asymmetric MoCo v2 (view1 queries, view2 keys).
- No shuffling BN: BatchNorm statistics here are the global batch's (SyncBN), which no
  permutation of the batch changes. The key encoder keeps its own running statistics.
"""

import jax
import jax.numpy as jnp
import ml_collections

from simsiam_jax import config_validation, losses
from simsiam_jax.methods import common
from simsiam_jax.train_state import TrainState, create_train_state as _create

TITLE = 'MoCo v2'
QUEUE = 'queue'
# Row of the queue the next keys are written to.
QUEUE_POSITION = 'queue_position'

create_optimizer = common.create_optimizer


def keys_per_step(config: ml_collections.ConfigDict) -> int:
  return config.batch_size * (2 if config.moco_v2.symmetric else 1)


def validate(config: ml_collections.ConfigDict):
  config_validation.require_momentum(config, 'moco_v2.momentum')
  config_validation.require_positive(config, 'moco_v2.temperature')
  config_validation.require_positive_int(config, 'moco_v2.queue_size')
  config_validation.require(isinstance(config.moco_v2.symmetric, bool),
                            'config.moco_v2.symmetric', config.moco_v2.symmetric,
                            'must be True or False')
  config_validation.require(
      config.moco_v2.queue_size % keys_per_step(config) == 0, 'config.moco_v2.queue_size',
      config.moco_v2.queue_size,
      f'must be a multiple of the {keys_per_step(config)} keys each step enqueues '
      '(batch_size, twice that with moco_v2.symmetric)')


def create_network(config: ml_collections.ConfigDict):
  return common.create_network(config, head_batch_norm='none', predictor=False)


def create_train_state(rng, config: ml_collections.ConfigDict, tx, mesh,
                       num_train_examples: int) -> TrainState:
  del num_train_examples

  def init_method_state(rng, variables):
    # As builder.py: random unit keys until the first queue_size keys have replaced them.
    queue = common.random_unit_rows(rng, config.moco_v2.queue_size, config.model.projector_dim)
    return {**common.init_target(variables), QUEUE: queue,
            QUEUE_POSITION: jnp.zeros((), jnp.int32)}

  return _create(rng, config, create_network(config), tx, mesh,
                 init_method_state=init_method_state, row_sharded=(QUEUE,))


def contrastive_loss(queries, keys, queue, config: ml_collections.ConfigDict):
  """The query views' InfoNCE against the other view's key; averaged when symmetric."""
  q1, q2 = queries
  k1, k2 = keys
  temperature = config.moco_v2.temperature
  if not config.moco_v2.symmetric:
    return losses.info_nce(q1, k2, queue, temperature)
  return (losses.info_nce(q1, k2, queue, temperature) +
          losses.info_nce(q2, k1, queue, temperature)) / 2


def enqueue(method_state, keys, config: ml_collections.ConfigDict):
  """The queue with the step's keys (l2-normalised) over its oldest rows."""
  _, k2 = keys
  new_keys = common.unit_rows(jnp.concatenate(keys) if config.moco_v2.symmetric else k2)
  position = method_state[QUEUE_POSITION]
  queue = jax.lax.dynamic_update_slice(method_state[QUEUE], new_keys, (position, 0))
  return {**method_state, QUEUE: queue,
          QUEUE_POSITION: (position + new_keys.shape[0]) % config.moco_v2.queue_size}


def train_step_fn(config: ml_collections.ConfigDict, steps_per_epoch: int):
  def step(state: TrainState, batch):
    views = common.normalized_views(batch, config)
    method_state = {**state.method_state, common.TARGET_PARAMS: common.moving_average(
        state.method_state[common.TARGET_PARAMS], common.encoder_part(state.params),
        config.moco_v2.momentum)}
    keys, method_state = common.target_projections(state.replace(method_state=method_state),
                                                   views)

    def loss_fn(params):
      queries, batch_stats = common.encode_views(state.apply_fn, params, state.batch_stats,
                                                 views)
      loss = contrastive_loss(queries, keys, method_state[QUEUE], config)
      return loss, (queries, batch_stats)

    (loss, (queries, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats,
                                      method_state=enqueue(method_state, keys, config))
    metrics = {'loss': loss,
               **common.projection_metrics(queries, state, config, steps_per_epoch)}
    return new_state, metrics

  return step
