"""SGD with the paper's lr rule: cosine-decayed encoder, constant-lr predictor; and apex's
LARC, which the official linear evaluation wraps around SGD."""

import jax
import jax.numpy as jnp
import ml_collections
import optax

ENCODER = 'encoder'
PREDICTOR = 'predictor'


def initial_learning_rate(config: ml_collections.ConfigDict) -> float:
  """The linear scaling rule: lr = base_lr * global_batch / 256."""
  return config.base_lr * config.batch_size / 256


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  return int(config.num_epochs * steps_per_epoch)


# 'cosine' decays every step; 'cosine_per_epoch' is the official code's adjust_learning_rate,
# which sets lr = init_lr * 0.5 * (1 + cos(pi * epoch / epochs)) once per epoch.
LR_SCHEDULES = ('cosine', 'cosine_per_epoch')


def cosine_decay(init_lr: float, *, num_epochs: float, steps_per_epoch: int,
                 warmup_epochs: float = 0, per_epoch: bool = False) -> optax.Schedule:
  """Linear warmup from 0, then cosine to 0 at num_epochs, per step or per epoch."""
  total_steps = int(num_epochs * steps_per_epoch)
  warmup_steps = int(warmup_epochs * steps_per_epoch)
  cosine = optax.cosine_decay_schedule(init_lr, decay_steps=max(total_steps - warmup_steps, 1))
  if per_epoch:
    per_step = cosine
    cosine = lambda step: per_step(step // steps_per_epoch * steps_per_epoch)
  if not warmup_steps:
    return cosine
  warmup = optax.linear_schedule(0.0, init_lr, warmup_steps)
  return optax.join_schedules([warmup, cosine], boundaries=[warmup_steps])


def cosine_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  return cosine_decay(initial_learning_rate(config), num_epochs=config.num_epochs,
                      steps_per_epoch=steps_per_epoch, warmup_epochs=config.warmup_epochs,
                      per_epoch=config.lr_schedule == 'cosine_per_epoch')


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


def scale_by_larc(*, trust_coefficient: float, weight_decay: float,
                  eps: float = 1e-8) -> optax.GradientTransformation:
  """apex.parallel.LARC(clip=False) before SGD: each leaf's gradient g (with decay folded in)
  is scaled by trust * |p| / (|g| + wd * |p| + eps). A leaf with |p| = 0 or |g| = 0 (a
  zero-initialised bias at step 1) keeps its raw gradient, without decay, as in apex."""

  def update_fn(updates, state, params):
    def scale(g, p):
      param_norm, grad_norm = jnp.linalg.norm(p), jnp.linalg.norm(g)
      adaptive_lr = trust_coefficient * param_norm / (
          grad_norm + param_norm * weight_decay + eps)
      scaled = (g + weight_decay * p) * adaptive_lr
      return jnp.where((param_norm != 0) & (grad_norm != 0), scaled, g)

    return jax.tree.map(scale, updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def larc_sgd(learning_rate: optax.Schedule, *, momentum: float, weight_decay: float,
             trust_coefficient: float = 0.001, eps: float = 1e-8) -> optax.GradientTransformation:
  """The official linear-evaluation optimizer: LARC(SGD(lr, momentum, wd), trust 0.001,
  clip=False) on every parameter, bias included. As in torch.optim.SGD, momentum accumulates
  the LARC-scaled gradients and the lr multiplies the result (optax.lars applies the lr
  first, which differs whenever the lr changes)."""
  return optax.chain(
      scale_by_larc(trust_coefficient=trust_coefficient, weight_decay=weight_decay, eps=eps),
      optax.trace(decay=momentum), optax.scale_by_learning_rate(learning_rate))
