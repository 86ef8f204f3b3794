"""What the methods share: their network (the backbone with a method's heads), the views
of a batch normalised on the device, a momentum target encoder, and the collapse monitor."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from simsiam_jax import losses, optimizer
from simsiam_jax.data import preprocess
from simsiam_jax.models import create_model
from simsiam_jax.train_state import TrainState, compute_dtype

# The encoder f (backbone + projector): what a target network copies; kNN and linear
# evaluation read its backbone.
ENCODER = ('backbone', 'projector')
TARGET_PARAMS = 'target_params'
TARGET_BATCH_STATS = 'target_batch_stats'


def encoder_part(tree):
  """The encoder's entries of a params or batch_stats tree (a head without BatchNorm has
  no statistics)."""
  return {name: tree[name] for name in ENCODER if name in tree}


def create_network(config: ml_collections.ConfigDict, *, head_batch_norm: str,
                   predictor: bool):
  """The backbone and the dims of config.model with a method's own 2-layer heads.

  `head_batch_norm` is a setting of heads.HEAD_BATCH_NORM ('none': MoCo v2's MLP, 'hidden':
  BYOL's and SwAV's, 'default': SimCLR's); without `predictor`, p = z.
  """
  model_config = config.model.copy_and_resolve_references()
  model_config.projector_layers = 2
  model_config.head_batch_norm = head_batch_norm
  model_config.predictor = 'mlp' if predictor else 'none'
  return create_model(model_config, dtype=compute_dtype(config))


def normalized_views(batch, config: ml_collections.ConfigDict, num_views: int = 2) -> list:
  """[view1, view2, ...] of a batch of uint8 views, normalised on the device."""
  normalize = functools.partial(preprocess.normalize_images, mean=config.data.mean,
                                std=config.data.std, dtype=compute_dtype(config))
  return [normalize(batch[f'view{i + 1}']) for i in range(num_views)]


def encode_views(apply_fn, params, batch_stats, views):
  """([z of each view], batch_stats after them): the encoder in train mode, one call per
  view, so each view is normalised by its own batch statistics, as in SimSiam's, MoCo's and
  BYOL's official code (SwAV's concatenates the crops of one size: methods/swav.py)."""
  projections = []
  for view in views:
    z, mutated = apply_fn({'params': params, 'batch_stats': batch_stats}, view, train=True,
                          method='encode', mutable=['batch_stats'])
    batch_stats = {**batch_stats, **mutated['batch_stats']}
    projections.append(z)
  return projections, batch_stats


def init_target(variables) -> dict:
  """A target encoder starts as a copy of the online one, BatchNorm statistics included."""
  return {TARGET_PARAMS: encoder_part(variables['params']),
          TARGET_BATCH_STATS: encoder_part(variables['batch_stats'])}


def target_projections(state: TrainState, views):
  """([sg(z) of each view by the target encoder], its new method_state): in train mode like
  the online encoder, keeping its own BatchNorm running statistics."""
  method_state = state.method_state
  projections, batch_stats = encode_views(state.apply_fn, method_state[TARGET_PARAMS],
                                          method_state[TARGET_BATCH_STATS], views)
  return ([jax.lax.stop_gradient(z) for z in projections],
          {**method_state, TARGET_BATCH_STATS: batch_stats})


def moving_average(target, online, momentum):
  """target <- target + (1 - m) (online - target), leaf by leaf (m = 1: frozen)."""
  return jax.tree.map(lambda t, o: t + (1 - momentum) * (o - t), target, online)


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.GradientTransformation:
  """config.optim's optimizer on every parameter with the encoder's schedule: the methods
  other than SimSiam have no constant-lr predictor."""
  return optimizer.pretraining_optimizer(config.optim, encoder_schedule(config, steps_per_epoch))


def encoder_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  return optimizer.cosine_schedule(config.optim, batch_size=config.batch_size,
                                   num_epochs=config.num_epochs, steps_per_epoch=steps_per_epoch)


def projection_metrics(projections, state: TrainState, config: ml_collections.ConfigDict,
                       steps_per_epoch: int) -> dict:
  """The collapse monitor (std of l2-normalised z) and the step's encoder lr."""
  z_std = sum(losses.normalized_std(z) for z in projections) / len(projections)
  return {'z_std': z_std,
          'learning_rate': encoder_schedule(config, steps_per_epoch)(state.step)}


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  return int(config.num_epochs * steps_per_epoch)


def unit_rows(x):
  """Each row l2-normalised, in float32 at least."""
  return losses.l2_normalize(losses.at_least_float32(x))


def random_unit_rows(rng, rows: int, dim: int):
  return unit_rows(jax.random.normal(rng, (rows, dim), jnp.float32))
