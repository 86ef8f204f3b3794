"""SwAV (Caron et al. 2020; facebookresearch/swav), as in SimSiam's Table 4 (2 x 224 views,
no multi-crop, no queue).

The encoder (backbone + SwAV's head, Linear-BN-ReLU-Linear) embeds each view; its
l2-normalised embedding is scored against `swav.num_prototypes` trained prototypes. Each
view's codes are the Sinkhorn-Knopp equipartition of its scores over the global batch
(`swav.sinkhorn_iterations` iterations, `swav.epsilon`), computed without gradient, and the
other view's scores predict them with a softmax at `swav.temperature` (main_swav.py).
As in main_swav.py the prototypes are l2-normalised before every step and are not updated
during the first `swav.freeze_prototypes_epochs` epochs.
Differences: the views go through the encoder one at a time (BatchNorm statistics per view,
as for every method here; main_swav.py concatenates crops of one size); multi-crop and the
queue of embeddings for small batches are not implemented.
"""

import jax
import ml_collections
import optax

from simsiam_jax import config_validation, losses, optimizer
from simsiam_jax.methods import common
from simsiam_jax.models import layers
from simsiam_jax.train_state import TrainState, create_train_state as _create

TITLE = 'SwAV'
# [num_prototypes, projector_dim], one unit vector per row (torch's Linear weight layout).
PROTOTYPES = 'prototypes'


def validate(config: ml_collections.ConfigDict):
  config_validation.require_positive_int(config, 'swav.num_prototypes')
  config_validation.require_positive(config, 'swav.temperature')
  config_validation.require_positive(config, 'swav.epsilon')
  config_validation.require_positive_int(config, 'swav.sinkhorn_iterations')
  config_validation.require_in(config, 'swav.freeze_prototypes_epochs', 0, float('inf'))


def create_network(config: ml_collections.ConfigDict):
  return common.create_network(config, head_batch_norm='hidden', predictor=False)


def freeze_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  return int(round(config.swav.freeze_prototypes_epochs * steps_per_epoch))


def param_labels(params):
  return {name: jax.tree.map(lambda _, n=name: n if n == PROTOTYPES else 'network', subtree)
          for name, subtree in params.items()}


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.GradientTransformation:
  """config.optim's optimizer with the encoder's schedule; the prototypes stand still for the
  first epoch(s)."""
  schedule = common.encoder_schedule(config, steps_per_epoch)
  return optax.multi_transform(
      {'network': optimizer.pretraining_optimizer(config.optim, schedule),
       PROTOTYPES: optimizer.frozen_for_first_steps(config.optim, schedule,
                                                    freeze_steps(config, steps_per_epoch))},
      param_labels)


def create_train_state(rng, config: ml_collections.ConfigDict, tx, mesh,
                       num_train_examples: int) -> TrainState:
  del num_train_examples
  dim = config.model.projector_dim

  def init_prototypes(rng):
    # torch.nn.Linear(dim, num_prototypes, bias=False)'s initialisation, as main_swav.py.
    kernel = layers.torch_linear_kernel_init(rng, (dim, config.swav.num_prototypes))
    return {PROTOTYPES: kernel.T}

  return _create(rng, config, create_network(config), tx, mesh,
                 init_extra_params=init_prototypes)


def network_params(params):
  return {name: value for name, value in params.items() if name != PROTOTYPES}


def swav_loss(scores1, scores2, config: ml_collections.ConfigDict):
  """Each view's scores predict the other view's codes; the two predictions averaged."""
  swav = config.swav
  codes1, codes2 = (jax.lax.stop_gradient(losses.sinkhorn(s, swav.epsilon,
                                                          swav.sinkhorn_iterations))
                    for s in (scores1, scores2))
  return (losses.swapped_prediction(codes1, scores2, swav.temperature) +
          losses.swapped_prediction(codes2, scores1, swav.temperature)) / 2


def train_step_fn(config: ml_collections.ConfigDict, steps_per_epoch: int):
  def step(state: TrainState, batch):
    views = common.normalized_views(batch, config)
    params = {**state.params, PROTOTYPES: common.unit_rows(state.params[PROTOTYPES])}
    state = state.replace(params=params)

    def loss_fn(params):
      projections, batch_stats = common.encode_views(state.apply_fn, network_params(params),
                                                     state.batch_stats, views)
      scores = [common.unit_rows(z) @ params[PROTOTYPES].T for z in projections]
      return swav_loss(*scores, config), (projections, batch_stats)

    (loss, (projections, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    metrics = {'loss': loss,
               **common.projection_metrics(projections, state, config, steps_per_epoch)}
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), metrics

  return step
