"""SimSiam pretraining: one sharded train step and the loop around it."""

import functools
import math
from typing import Any, Callable

import jax
import ml_collections
import optax
from absl import logging
from flax import traverse_util
from jax.sharding import Mesh

from simsiam_jax import checkpointing, config_validation, features, input_pipeline, knn_monitor
from simsiam_jax import losses, optimizer, preprocess, reporting, sharding
from simsiam_jax.models import create_model
from simsiam_jax.train_state import TrainState, compute_dtype, create_train_state


def normalized_view_pairs(batch, config: ml_collections.ConfigDict) -> list[tuple]:
  """[(view1, view2), ...] of a batch of uint8 views, normalised on the device.

  The batch holds 'view1', 'view2' (and 'view3', 'view4' for two pairs per image).
  """
  normalize = functools.partial(preprocess.normalize_images, mean=config.data.mean,
                                std=config.data.std, dtype=compute_dtype(config))
  return [(normalize(batch[f'view{2 * i + 1}']), normalize(batch[f'view{2 * i + 2}']))
          for i in range(losses.num_view_pairs(config.loss_symmetry))]


def loss_fn(params, batch_stats, apply_fn, pairs, config: ml_collections.ConfigDict):
  """(loss, (per-pair outputs, new batch_stats)) of the model in train mode on view pairs."""
  outputs = []
  for view1, view2 in pairs:
    pair_outputs, mutated = apply_fn({'params': params, 'batch_stats': batch_stats},
                                     view1, view2, train=True, mutable=['batch_stats'])
    batch_stats = mutated['batch_stats']
    outputs.append(pair_outputs)
  loss = losses.simsiam_loss(outputs, symmetric=config.loss_symmetry == 'symmetric',
                             stop_gradient=config.stop_gradient, similarity=config.similarity)
  return loss, (outputs, batch_stats)


def train_step(state: TrainState, batch, *, config: ml_collections.ConfigDict,
               lr_schedule: optax.Schedule):
  """One SGD step on a global batch of uint8 view pairs; returns the new state and metrics."""
  pairs = normalized_view_pairs(batch, config)
  (loss, (outputs, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, state.batch_stats, state.apply_fn, pairs, config)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)

  def mean_std(name):
    values = [losses.normalized_std(o[f'{name}{v}']) for o in outputs for v in (1, 2)]
    return sum(values) / len(values)

  metrics = {'loss': loss, 'learning_rate': lr_schedule(state.step),
             'z_std': mean_std('z'), 'p_std': mean_std('p')}
  return new_state, metrics


def make_train_step(config: ml_collections.ConfigDict, lr_schedule: optax.Schedule,
                    mesh: Mesh) -> Callable:
  """The train step jit-compiled for `mesh`: batch sharded over `data`, state replicated."""
  replicated = sharding.replicated(mesh)
  return jax.jit(
      functools.partial(train_step, config=config, lr_schedule=lr_schedule),
      in_shardings=(replicated, sharding.batch_sharding(mesh)),
      out_shardings=(replicated, replicated),
      donate_argnums=0)


def _hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config flattened to TensorBoard's scalar-or-string hyperparameters."""
  flat = traverse_util.flatten_dict(config.to_dict(), sep='.')
  return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}


def _knn_due(config: ml_collections.ConfigDict, step: int, steps_per_epoch: int,
             total_steps: int) -> bool:
  """At the end, and every knn.every_epochs from step 0 (the random-init baseline) on."""
  every = config.knn.every_epochs * steps_per_epoch
  return step == total_steps or (every > 0 and step % every == 0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Pretrains SimSiam as `config` says in `workdir`, resuming from its latest checkpoint.

  Returns the metrics of the last reporting window, the last kNN top-1, the first and last
  step this call trained, the run's total steps and the z-std of no collapse, 1/sqrt(d).
  """
  config_validation.validate_workdir(workdir)
  config_validation.validate_config(config, device_count=jax.device_count(),
                                    process_count=jax.process_count())
  mesh = sharding.create_mesh()
  steps_per_epoch = input_pipeline.pretrain_steps_per_epoch(config)
  total_steps = optimizer.num_train_steps(config, steps_per_epoch)
  lr_schedule = optimizer.cosine_schedule(config, steps_per_epoch)
  model = create_model(config.model, dtype=compute_dtype(config))
  tx = optimizer.create_optimizer(config, steps_per_epoch)
  p_train_step = make_train_step(config, lr_schedule, mesh)
  checkpointing.check_resumable(workdir, config)
  # The kNN monitor runs at the end, if not before: its data are checked now.
  input_pipeline.labeled_eval_splits(config)
  preemption = checkpointing.install_sigterm_handler()

  with checkpointing.Checkpointer(workdir, max_to_keep=config.keep_checkpoints,
                                  save_every_steps=config.checkpoint_every_steps) as ckpt:
    state = create_train_state(jax.random.key(config.seed), config, model, tx, mesh)
    start_step = 0
    restored = ckpt.restore(state)
    if restored is not None:
      state, start_step = restored
      logging.info('Resumed from the checkpoint of step %d in %s.', start_step, workdir)
    writer = reporting.create_summary_writer(workdir)
    if start_step == 0:
      writer.write_hparams(_hparams(config))
    logging.info('Pretraining %s for steps %d-%d (%d per epoch) on %d devices, global batch '
                 '%d.', config.model.name, start_step + 1, total_steps, steps_per_epoch,
                 jax.device_count(), config.batch_size)
    summary = {'start_step': start_step, 'step': start_step, 'total_steps': total_steps,
               'z_std_target': 1 / math.sqrt(config.model.projector_dim)}
    reporter = reporting.ProgressReporter(
        writer, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
        z_std_target=summary['z_std_target'],
        collapse_fraction=config.collapse_warning_fraction)
    batches = input_pipeline.prefetch_to_mesh(
        input_pipeline.create_pretrain_iterator(config, start_step=start_step), mesh)

    def monitor_knn(step):
      summary['knn_top1'] = knn_monitor.knn_top1(
          config, features.backbone_variables(state.params, state.batch_stats), mesh)
      writer.write_scalars(step, {'knn_top1': summary['knn_top1']})

    if start_step == 0 and _knn_due(config, 0, steps_per_epoch, total_steps):
      monitor_knn(0)
    for step in range(start_step + 1, total_steps + 1):
      state, metrics = p_train_step(state, next(batches))
      reporter.add(step, metrics)
      summary['step'] = step
      if step % config.log_every_steps == 0 or step == total_steps:
        summary.update(reporter.report())
      stop = preemption.requested or ckpt.reached_preemption(step)
      if stop or step == total_steps or ckpt.should_save(step):
        # Never replace the last good checkpoint by one of a diverged run.
        checkpointing.check_finite(step, metrics)
        ckpt.save(step, state, config, force=True)
      if stop:
        logging.warning('Preempted: saved step %d; rerun the same command to resume.', step)
        break
      if _knn_due(config, step, steps_per_epoch, total_steps):
        monitor_knn(step)
    writer.flush()
  return summary
