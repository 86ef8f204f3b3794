"""The train state (params, BatchNorm statistics, optimizer state, step, and what a method
keeps beside them) and its creation on the mesh."""

from typing import Any, Callable, Collection

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state
from jax.sharding import Mesh

from simsiam_jax import sharding


class TrainState(train_state.TrainState):
  batch_stats: Any
  # A method's own arrays, e.g. a target network or a memory bank; checkpointed with the
  # rest of the state.
  method_state: Any = flax.struct.field(default_factory=dict)


def compute_dtype(config: ml_collections.ConfigDict):
  return jnp.bfloat16 if config.half_precision else jnp.float32


def create_train_state(rng, config: ml_collections.ConfigDict, model: nn.Module,
                       tx: optax.GradientTransformation, mesh: Mesh, *,
                       init_method_state: Callable[[jax.Array, dict], dict] = (
                           lambda rng, variables: {}),
                       init_extra_params: Callable[[jax.Array], dict] = lambda rng: {},
                       row_sharded: Collection[str] = ()) -> TrainState:
  """Initialises the state directly into its placement on the mesh.

  `init_extra_params(rng)` adds trained parameters that are not the network's (SwAV's
  prototypes); `init_method_state(rng, variables)` makes what the method keeps beside them.

  Everything is replicated, except the `method_state` entries named in `row_sharded`,
  whose rows (per-example arrays such as a memory bank) are split over the `data` axis.
  """
  size = config.data.image_size

  def init():
    images = jnp.zeros((2, size, size, 3), compute_dtype(config))
    variables = model.init(rng, images, images, train=False)
    params = {**variables['params'], **init_extra_params(jax.random.fold_in(rng, 1))}
    return TrainState.create(apply_fn=model.apply, params=params,
                             batch_stats=variables['batch_stats'], tx=tx,
                             method_state=init_method_state(jax.random.fold_in(rng, 2),
                                                            variables))

  abstract = jax.eval_shape(init)
  shardings = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
  shardings = shardings.replace(method_state={
      name: sharding.batch_sharding(mesh) if name in row_sharded else value
      for name, value in shardings.method_state.items()})
  return jax.jit(init, out_shardings=shardings)()


def state_shardings(state: TrainState):
  """The placement of each array of `state`, for jit's in/out shardings."""
  return jax.tree.map(lambda x: x.sharding, state)
