"""Linear evaluation: a linear classifier on the frozen pretrained backbone (paper Sec. 4).

Two modes:
- the official recipe (`config.linear.cached_features=False`): every step draws
  RandomResizedCrop + flip views, runs them through the frozen backbone (BatchNorm in
  inference mode) and trains the classifier with LARS;
- a fast mode (`cached_features=True`): backbone features of centre crops are extracted once
  and the classifier trains on them; cheaper, usually a little below the official number,
  and reported as "cached features".
"""

import functools
import math
import os
import time
from typing import Iterable, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state
from jax.sharding import Mesh

from simsiam_jax import checkpointing, config_validation
from simsiam_jax.data import input_pipeline
from simsiam_jax.evaluation import evaluators, features
from simsiam_jax import optimizer, reporting, sharding
from simsiam_jax import workdir as workdir_lib


class LinearClassifier(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x):
    # The official recipe's initialisation: weights N(0, 0.01), zero bias.
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                    bias_init=nn.initializers.zeros)(x)


def learning_rate_schedule(linear_config: ml_collections.ConfigDict,
                           steps_per_epoch: int) -> optax.Schedule:
  """lr = base_lr * batch / 256, cosine-decayed per step or per epoch (main_lincls.py)."""
  return optimizer.cosine_decay(linear_config.base_lr * linear_config.batch_size / 256,
                                num_epochs=linear_config.num_epochs,
                                steps_per_epoch=steps_per_epoch,
                                per_epoch=linear_config.lr_schedule == 'cosine_per_epoch')


def create_optimizer(linear_config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.GradientTransformation:
  """The official recipe: LARC(SGD) with trust coefficient 0.001 on weight and bias."""
  return optimizer.larc_sgd(learning_rate_schedule(linear_config, steps_per_epoch),
                            momentum=linear_config.momentum,
                            weight_decay=linear_config.weight_decay)


def _valid(labels):
  return labels != features.PAD_LABEL


def classifier_step(state: train_state.TrainState, batch_features, labels):
  """One step on (features, labels); label -1 marks padding, which carries no loss."""
  valid = _valid(labels)

  def loss_fn(params):
    logits = state.apply_fn({'params': params}, batch_features)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
    return jnp.sum(losses * valid) / jnp.maximum(jnp.sum(valid), 1)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads=grads), loss


def count_correct(params, apply_fn, batch_features, labels):
  """(top-1 correct, top-5 correct, real examples) of a batch."""
  logits = apply_fn({'params': params}, batch_features)
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  hits = (top5 == labels[:, None]) & _valid(labels)[:, None]
  return jnp.array([jnp.sum(hits[:, 0]), jnp.sum(jnp.any(hits, axis=1)),
                    jnp.sum(_valid(labels))])


def evaluate(state, feature_batches: Iterable[tuple[jax.Array, jax.Array]]) -> dict[str, float]:
  """Top-1 / top-5 accuracy (in percent) of the classifier on (features, labels) batches of
  the whole validation split; padding (label -1) does not count."""
  correct_fn = jax.jit(functools.partial(count_correct, apply_fn=state.apply_fn))
  counts = 0
  for batch_features, labels in feature_batches:
    counts += correct_fn(state.params, batch_features=batch_features, labels=labels)
  top1, top5, total = (int(c) for c in jax.device_get(counts))
  return {'top1': 100.0 * top1 / max(total, 1), 'top5': 100.0 * top5 / max(total, 1),
          'num_examples': total}


def cached_feature_batches(config: ml_collections.ConfigDict, feature_fn, backbone, mesh: Mesh,
                           steps_per_epoch: int, start_step: int) -> Iterator:
  """Global (features, labels) batches from `start_step` on, forever, from features extracted
  once per process and reshuffled each epoch."""
  train_batches, _ = input_pipeline.create_eval_iterators(config)
  local_x, local_y = features.local_features(feature_fn, backbone, train_batches(), mesh)
  local_batch = config.linear.batch_size // jax.process_count()
  # steps_per_epoch is from the global count, so that every process runs the same number of
  # steps; each process's shard holds at most steps_per_epoch * local_batch examples, and
  # the epoch's last batches are padded (label PAD_LABEL) with what it lacks.
  rng = np.random.default_rng(config.seed)
  start_epoch, offset = divmod(start_step, steps_per_epoch)
  for _ in range(start_epoch):  # The orders of the epochs already trained.
    rng.permutation(len(local_x))
  while True:
    order = rng.permutation(len(local_x))
    for step in range(offset, steps_per_epoch):
      rows = order[step * local_batch:(step + 1) * local_batch]
      padding = local_batch - len(rows)
      batch_x = np.concatenate([local_x[rows], np.zeros((padding, *local_x.shape[1:]),
                                                        local_x.dtype)])
      batch_y = np.concatenate([local_y[rows], np.full(padding, features.PAD_LABEL,
                                                       local_y.dtype)])
      yield sharding.global_batch_from_local((batch_x, batch_y), mesh)
    offset = 0


def augmented_feature_batches(config: ml_collections.ConfigDict, feature_fn, backbone, mesh: Mesh,
                              steps_per_epoch: int, start_step: int) -> Iterator:
  """Features of freshly augmented views from `start_step` on: the official recipe."""
  del steps_per_epoch  # The iterator reaches start_step by itself.
  images = input_pipeline.prefetch_to_mesh(
      input_pipeline.create_linear_train_iterator(config, start_step=start_step), mesh)
  return (feature_fn(backbone, batch) for batch in images)


# Linear fields that change only the logging and the saving, not the result: a resumed run
# may change them.
_PROGRESS_ONLY_FIELDS = ('linear.log_every_steps', 'linear.checkpoint_every_steps')


def linear_state_fields(flat_config: dict) -> dict:
  """The fields a linear evaluation's checkpoints depend on (checkpointing.check_resumable)."""
  return {k: v for k, v in flat_config.items()
          if k in ('mode', 'pretrained_workdir', 'seed')
          or (k.startswith('linear.') and k not in _PROGRESS_ONLY_FIELDS)}


def _evaluation_steps(config: ml_collections.ConfigDict, steps_per_epoch: int,
                      total_steps: int) -> list[int]:
  return [step for step in range(1, total_steps + 1)
          if evaluators.is_due(config.linear.eval_every_epochs, step, steps_per_epoch,
                               total_steps)]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains the linear classifier on the frozen backbone, resuming from the last checkpoint
  in `workdir`; returns top-1/top-5 in percent, the last and the best, or, if preempted, only
  the step it stopped at."""
  workdir_lib.validate(workdir)
  os.makedirs(workdir, exist_ok=True)
  config_validation.validate_linear_config(config, device_count=jax.device_count(),
                                           process_count=jax.process_count())
  input_pipeline.labeled_eval_splits(config)
  checkpointing.check_resumable(workdir, config, linear_state_fields)
  mode = 'cached features' if config.linear.cached_features else 'augmented views'
  mesh = sharding.create_mesh()
  steps_per_epoch = input_pipeline.linear_steps_per_epoch(config)
  total_steps = int(config.linear.num_epochs * steps_per_epoch)
  evaluation_steps = _evaluation_steps(config, steps_per_epoch, total_steps)
  preemption = workdir_lib.install_sigterm_handler()

  with checkpointing.Checkpointer(workdir, max_to_keep=1,
                                  save_every_steps=config.linear.checkpoint_every_steps) as ckpt:
    backbone = evaluators.restore_backbone(config, mesh)
    feature_dtype = jnp.dtype(config.linear.feature_dtype)
    feature_fn = features.make_feature_fn(config.model, config.data, feature_dtype, mesh)
    classifier = LinearClassifier(input_pipeline.num_classes(config))
    feature_dim = features.create_backbone(config.model, feature_dtype).feature_dim
    params = classifier.init(jax.random.key(config.seed),
                             jnp.zeros((1, feature_dim)))['params']
    state = jax.device_put(
        train_state.TrainState.create(apply_fn=classifier.apply, params=params,
                                      tx=create_optimizer(config.linear, steps_per_epoch)),
        sharding.replicated(mesh))
    # Row i: top-1, top-5 and the number of images of the evaluation at evaluation_steps[i],
    # NaN until it has run; checkpointed with the classifier, so a resumed run reports them.
    evaluations = np.full((len(evaluation_steps), 3), np.nan)
    evaluation_rows = {step: row for row, step in enumerate(evaluation_steps)}
    start_step = 0
    restored = ckpt.restore({'classifier': state, 'evaluations': evaluations})
    if restored is not None:
      saved, start_step = restored
      state, evaluations = saved['classifier'], np.array(saved['evaluations'])
      logging.info('Resumed the linear evaluation from the checkpoint of step %d in %s.',
                   start_step, workdir)
    make_batches = cached_feature_batches if config.linear.cached_features else (
        augmented_feature_batches)
    train_batches = make_batches(config, feature_fn, backbone, mesh, steps_per_epoch,
                                 start_step)
    step_fn = jax.jit(classifier_step, donate_argnums=0)
    writer = reporting.create_summary_writer(workdir)

    _, eval_batches = input_pipeline.create_eval_iterators(config)
    if config.linear.cached_features:  # Extracted once, like the training features.
      cached_eval = list(features.feature_batches(feature_fn, backbone, eval_batches(), mesh))
      eval_features = lambda: cached_eval
    else:
      eval_features = lambda: features.feature_batches(feature_fn, backbone, eval_batches(),
                                                       mesh)

    logging.info('Linear evaluation (%s) of %s: steps %d-%d (%d per epoch), batch %d.', mode,
                 config.pretrained_workdir, start_step + 1, total_steps, steps_per_epoch,
                 config.linear.batch_size)
    started = time.perf_counter()
    for step in range(start_step + 1, total_steps + 1):
      batch_features, labels = next(train_batches)
      state, loss = step_fn(state, batch_features, labels)
      if step % config.linear.log_every_steps == 0 or step == total_steps:
        loss = float(loss)
        if not math.isfinite(loss):
          raise checkpointing.NonFiniteLossError(
              f'linear evaluation: loss is {loss} at step {step}')
        rate = (step - start_step) / (time.perf_counter() - started)
        logging.info('linear eval (%s) step %d/%d loss %.4f | %.2f steps/s, ETA %.0fs', mode,
                     step, total_steps, loss, rate, (total_steps - step) / rate)
        writer.write_scalars(step, {'linear/train_loss': loss})
      if step in evaluation_rows:
        metrics = evaluate(state, eval_features())
        evaluations[evaluation_rows[step]] = [
            metrics['top1'], metrics['top5'], metrics['num_examples']]
        logging.info('Linear evaluation (%s) at epoch %g: top-1 %.2f%%, top-5 %.2f%% on %d '
                     'images of %s.', mode, step / steps_per_epoch, metrics['top1'],
                     metrics['top5'], metrics['num_examples'], config.data.eval_split)
        writer.write_scalars(step, {'linear/top1': metrics['top1'],
                                    'linear/top5': metrics['top5']})
      if ckpt.save_when_due(step, {'classifier': state, 'evaluations': evaluations}, config,
                            metrics=loss, last_step=total_steps, preemption=preemption):
        writer.flush()
        return {'mode': mode, 'step': step, 'total_steps': total_steps}
    writer.flush()
  history = {step / steps_per_epoch: {'top1': top1, 'top5': top5, 'num_examples': int(count)}
             for step, (top1, top5, count) in zip(evaluation_steps, evaluations)}
  last_epoch = max(history)
  best_epoch = max(history, key=lambda e: history[e]['top1'])
  result = {'mode': mode, 'step': total_steps, 'total_steps': total_steps,
            'top1': history[last_epoch]['top1'], 'top5': history[last_epoch]['top5'],
            'best_top1': history[best_epoch]['top1'], 'best_epoch': best_epoch,
            'num_examples': history[last_epoch]['num_examples']}
  evaluators.write_result(workdir, 'linear_eval.json', config,
                          {**result, 'history': {str(e): h for e, h in history.items()}})
  return result
