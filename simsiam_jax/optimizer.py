"""SGD with the paper's lr rule: cosine-decayed encoder, constant-lr predictor; and the
large-batch optimizers of SimCLR, BYOL and SwAV, each as its official code applies it (with a
changing lr they are three different optimizers): SimCLR's LARS, BYOL's LARS, and apex's LARC
around SGD, which SwAV and the official linear evaluation use."""

import jax
import jax.numpy as jnp
import ml_collections
import optax

ENCODER = 'encoder'
PREDICTOR = 'predictor'


def initial_learning_rate(optim: ml_collections.ConfigDict, batch_size: int) -> float:
  """The linear scaling rule: lr = base_lr * global_batch / 256."""
  return optim.base_lr * batch_size / 256


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


def cosine_schedule(optim: ml_collections.ConfigDict, *, batch_size: int, num_epochs: float,
                    steps_per_epoch: int) -> optax.Schedule:
  """The encoder's lr: config.optim's base lr, warmup and schedule over the run."""
  return cosine_decay(initial_learning_rate(optim, batch_size), num_epochs=num_epochs,
                      steps_per_epoch=steps_per_epoch, warmup_epochs=optim.warmup_epochs,
                      per_epoch=optim.lr_schedule == 'cosine_per_epoch')


def predictor_schedule(optim: ml_collections.ConfigDict, *, batch_size: int, num_epochs: float,
                       steps_per_epoch: int) -> optax.Schedule:
  if optim.fixed_predictor_lr:
    return optax.constant_schedule(initial_learning_rate(optim, batch_size))
  return cosine_schedule(optim, batch_size=batch_size, num_epochs=num_epochs,
                         steps_per_epoch=steps_per_epoch)


def sgd(optim: ml_collections.ConfigDict, schedule: optax.Schedule):
  # Decay added to the gradient before momentum, as torch.optim.SGD(weight_decay=...) does;
  # the official code decays every parameter, BatchNorm and biases included.
  return optax.chain(optax.add_decayed_weights(optim.weight_decay),
                     optax.sgd(schedule, momentum=optim.momentum))


def _is_matrix(params):
  """Weight matrices and kernels: what SimCLR's LARS (exclude_from_weight_decay=
  ['batch_normalization', 'bias']) and BYOL's (exclude_bias_and_norm) decay and adapt."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def _lars(optim: ml_collections.ConfigDict, schedule: optax.Schedule, *,
          lr_after_momentum: bool):
  """g' = g + wd p and the trust ratio eta |p| / |g'| on weight matrices and kernels only
  (plain momentum SGD on biases and BatchNorm), then the lr and the momentum in the order
  given."""
  scale_by_lr = optax.scale_by_learning_rate(schedule)
  momentum = optax.trace(decay=optim.momentum)
  return optax.chain(
      optax.add_decayed_weights(optim.weight_decay, mask=_is_matrix),
      optax.masked(optax.scale_by_trust_ratio(trust_coefficient=optim.lars_trust_coefficient,
                                              eps=0.0), _is_matrix),
      *((momentum, scale_by_lr) if lr_after_momentum else (scale_by_lr, momentum)))


def simclr_lars(optim: ml_collections.ConfigDict, schedule: optax.Schedule):
  """SimCLR's LARS (classic_momentum=True): v = m v + lr * ratio * g' and p -= v, the lr
  applied before the momentum (as optax.lars does)."""
  return _lars(optim, schedule, lr_after_momentum=False)


def byol_lars(optim: ml_collections.ConfigDict, schedule: optax.Schedule):
  """BYOL's LARS: mu = m mu + ratio * g' and p -= lr * mu, the lr applied after the
  momentum, so a step's lr scales the whole accumulated velocity."""
  return _lars(optim, schedule, lr_after_momentum=True)


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
  """LARC(SGD(lr, momentum, wd), trust, clip=False) on every parameter, bias and BatchNorm
  included: SwAV's pretraining optimizer and the official linear evaluation's (trust 0.001).
  As in torch.optim.SGD, momentum accumulates the LARC-scaled gradients and the lr multiplies
  the result (optax.lars applies the lr first, which differs whenever the lr changes)."""
  return optax.chain(
      scale_by_larc(trust_coefficient=trust_coefficient, weight_decay=weight_decay, eps=eps),
      optax.trace(decay=momentum), optax.scale_by_learning_rate(learning_rate))


def larc(optim: ml_collections.ConfigDict, schedule: optax.Schedule):
  return larc_sgd(schedule, momentum=optim.momentum, weight_decay=optim.weight_decay,
                  trust_coefficient=optim.lars_trust_coefficient)


# config.optim.optimizer, each as its official code applies it:
#   'sgd': torch.optim.SGD (SimSiam's main_simsiam.py, MoCo's main_moco.py);
#   'simclr_lars': google-research/simclr lars_optimizer.py (the lr inside the momentum);
#   'byol_lars': deepmind-research byol/utils/optimizers.py (the lr after the momentum);
#   'larc': apex LARC(clip=False) around torch.optim.SGD on every parameter (main_swav.py).
PRETRAINING_OPTIMIZERS = {'sgd': sgd, 'simclr_lars': simclr_lars, 'byol_lars': byol_lars,
                          'larc': larc}
OPTIMIZERS = tuple(PRETRAINING_OPTIMIZERS)


def pretraining_optimizer(optim: ml_collections.ConfigDict,
                          schedule: optax.Schedule) -> optax.GradientTransformation:
  """`optim.optimizer` with the lr `schedule`."""
  return PRETRAINING_OPTIMIZERS[optim.optimizer](optim, schedule)


def frozen_for_first_steps(optim: ml_collections.ConfigDict, schedule: optax.Schedule,
                           num_steps: int) -> optax.GradientTransformation:
  """`pretraining_optimizer(optim, schedule)` that leaves its parameters alone for the first
  `num_steps` steps, as torch's optimizers do a parameter whose grad is None (SwAV's frozen
  prototypes): no update, no weight decay, no momentum accumulated. Afterwards the lr is
  the schedule's at the run's step, not at the parameter's first."""
  inner = pretraining_optimizer(optim, lambda count: schedule(count + num_steps))

  def init_fn(params):
    return {'count': jnp.zeros((), jnp.int32), 'inner': inner.init(params)}

  def update_fn(updates, state, params=None):
    frozen = state['count'] < num_steps
    new_updates, new_inner = inner.update(updates, state['inner'], params)
    keep = lambda old, new: jnp.where(frozen, old, new)
    return (jax.tree.map(lambda u: jnp.where(frozen, jnp.zeros_like(u), u), new_updates),
            {'count': state['count'] + 1,
             'inner': jax.tree.map(keep, state['inner'], new_inner)})

  return optax.GradientTransformation(init_fn, update_fn)


def param_labels(params):
  """'predictor' for the predictor's subtree, 'encoder' for everything else."""
  return {name: jax.tree.map(lambda _, n=name: PREDICTOR if n == PREDICTOR else ENCODER, subtree)
          for name, subtree in params.items()}


def create_optimizer(optim: ml_collections.ConfigDict, *, batch_size: int, num_epochs: float,
                     steps_per_epoch: int,
                     frozen_predictor: bool = False) -> optax.GradientTransformation:
  """SGD with the encoder's schedule, and the predictor's (or none: `frozen_predictor`)."""
  run = {'batch_size': batch_size, 'num_epochs': num_epochs, 'steps_per_epoch': steps_per_epoch}
  predictor_tx = (optax.set_to_zero() if frozen_predictor else
                  pretraining_optimizer(optim, predictor_schedule(optim, **run)))
  return optax.multi_transform(
      {ENCODER: pretraining_optimizer(optim, cosine_schedule(optim, **run)),
       PREDICTOR: predictor_tx},
      param_labels)
