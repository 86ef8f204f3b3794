"""SGD with the paper's lr rule: cosine-decayed encoder, constant-lr predictor."""

import jax
import ml_collections
import optax

ENCODER = 'encoder'
PREDICTOR = 'predictor'


def initial_learning_rate(config: ml_collections.ConfigDict) -> float:
  """The linear scaling rule: lr = base_lr * global_batch / 256."""
  return config.base_lr * config.batch_size / 256


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  return int(config.num_epochs * steps_per_epoch)


def cosine_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  init_lr = initial_learning_rate(config)
  total_steps = num_train_steps(config, steps_per_epoch)
  warmup_steps = int(config.warmup_epochs * steps_per_epoch)
  cosine = optax.cosine_decay_schedule(init_lr, decay_steps=max(total_steps - warmup_steps, 1))
  if not warmup_steps:
    return cosine
  warmup = optax.linear_schedule(0.0, init_lr, warmup_steps)
  return optax.join_schedules([warmup, cosine], boundaries=[warmup_steps])


def predictor_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  if config.fixed_predictor_lr:
    return optax.constant_schedule(initial_learning_rate(config))
  return cosine_schedule(config, steps_per_epoch)


def _sgd(config: ml_collections.ConfigDict, schedule: optax.Schedule):
  # Decay added to the gradient before momentum, as torch.optim.SGD(weight_decay=...) does;
  # the official code decays every parameter, BatchNorm and biases included.
  return optax.chain(optax.add_decayed_weights(config.weight_decay),
                     optax.sgd(schedule, momentum=config.momentum))


def param_labels(params):
  """'predictor' for the predictor's subtree, 'encoder' for everything else."""
  return {name: jax.tree.map(lambda _, n=name: PREDICTOR if n == PREDICTOR else ENCODER, subtree)
          for name, subtree in params.items()}


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.GradientTransformation:
  # A 'fixed_random' predictor stays at its initialisation (paper Table 1b).
  predictor_tx = (optax.set_to_zero() if config.model.predictor == 'fixed_random' else
                  _sgd(config, predictor_schedule(config, steps_per_epoch)))
  return optax.multi_transform(
      {ENCODER: _sgd(config, cosine_schedule(config, steps_per_epoch)),
       PREDICTOR: predictor_tx},
      param_labels)
