"""The train state (params, BatchNorm statistics, optimizer state, step) and its creation."""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state
from jax.sharding import Mesh

from simsiam_jax import sharding
from simsiam_jax.models import SimSiam


class TrainState(train_state.TrainState):
  batch_stats: Any


def compute_dtype(config: ml_collections.ConfigDict):
  return jnp.bfloat16 if config.half_precision else jnp.float32


def create_train_state(rng, config: ml_collections.ConfigDict, model: SimSiam,
                       tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
  """Initialises parameters directly into their replicated placement on the mesh."""
  size = config.data.image_size

  def init():
    images = jnp.zeros((2, size, size, 3), compute_dtype(config))
    variables = model.init(rng, images, images, train=False)
    return TrainState.create(apply_fn=model.apply, params=variables['params'],
                             batch_stats=variables['batch_stats'], tx=tx)

  return jax.jit(init, out_shardings=sharding.replicated(mesh))()
