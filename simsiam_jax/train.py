"""Pretraining: the loop around a method's sharded train step (methods/), which it knows
only by its functions: data, checkpoints, evaluation and reporting are the same for all."""

import itertools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging
from flax import traverse_util
from jax.sharding import Mesh

from simsiam_jax import checkpointing, config_validation
from simsiam_jax.data import device_augmentations, input_pipeline
from simsiam_jax.evaluation import evaluators, features
from simsiam_jax import losses, methods, reporting, sharding
from simsiam_jax import workdir as workdir_lib
from simsiam_jax.train_state import TrainState, state_shardings


def train_step_fn(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Callable:
  """step(state, batch) -> (state, metrics) of config.method; with
  config.data.augment_on='device' it first augments the batch's crops, with the draws of
  the step the state is at (so a resumed run augments as an uninterrupted one)."""
  method_step = methods.get(config.method).train_step_fn(config, steps_per_epoch)
  if input_pipeline.augment_on(config) == 'host':
    return method_step
  augment = device_augmentation(config)

  def step(state: TrainState, batch):
    return method_step(state, augment(batch, state.step))

  return step


def device_augmentation(config: ml_collections.ConfigDict) -> Callable:
  """augment(batch, step) -> batch: what config.data.augment_on='device' does to the crops
  of the global batch of `step` before the method's step."""
  return lambda batch, step: device_augmentations.augment_batch(
      batch, step, config.seed, config.aug, config.data.image_size)


def make_train_step(config: ml_collections.ConfigDict, steps_per_epoch: int, mesh: Mesh,
                    state: TrainState) -> Callable:
  """The method's train step jit-compiled for `mesh`: the batch sharded over `data`, the
  state kept where `state` is (replicated, a memory bank split by rows)."""
  shardings = state_shardings(state)
  return jax.jit(train_step_fn(config, steps_per_epoch),
                 in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)),
                 donate_argnums=0)


def batch_shapes(config: ml_collections.ConfigDict) -> dict[str, jax.ShapeDtypeStruct]:
  """The global batch the train step takes: the uint8 views (two per view pair) and the
  examples' indices."""
  views = (config.batch_size, config.data.image_size, config.data.image_size, 3)
  shapes = {f'view{v + 1}': jax.ShapeDtypeStruct(views, jnp.uint8)
            for v in range(2 * losses.num_view_pairs(config.loss_symmetry))}
  shapes['index'] = jax.ShapeDtypeStruct((config.batch_size,), jnp.int32)
  return shapes


def step_cost(compiled) -> dict[str, float]:
  """FLOPs and bytes accessed of one device's compiled step from XLA's cost analysis; NaN
  where there is none."""
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, list) else cost) or {}  # A list in older jaxlibs.
  return {'flops': float(cost.get('flops', math.nan)),
          'bytes_accessed': float(cost.get('bytes accessed', math.nan))}


def step_flops(compiled) -> float:
  return step_cost(compiled)['flops']


def step_memory_mib(compiled) -> dict[str, float]:
  """Per-device memory of a compiled step from XLA's memory analysis, in MiB: its
  arguments, outputs and temporaries, and their total without the donated (aliased) bytes;
  {} where the backend gives no analysis."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return {}
  sizes = {'arguments': analysis.argument_size_in_bytes, 'outputs': analysis.output_size_in_bytes,
           'temporaries': analysis.temp_size_in_bytes}
  total = sum(sizes.values()) - analysis.alias_size_in_bytes
  return {name: size / 2**20 for name, size in {**sizes, 'total': total}.items()}


def _hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config flattened to TensorBoard's scalar-or-string hyperparameters."""
  flat = traverse_util.flatten_dict(config.to_dict(), sep='.')
  return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Pretrains config.method as `config` says in `workdir`, resuming from its last checkpoint.

  Returns the metrics of the last reporting window, the evaluators' last metrics (such as
  knn_top1), the first and last step this call trained, the run's total steps and the z-std
  of no collapse, 1/sqrt(d).
  """
  workdir_lib.validate(workdir)
  config_validation.validate_config(config, device_count=jax.device_count(),
                                    process_count=jax.process_count())
  method = methods.get(config.method)
  method.validate(config)
  mesh = sharding.create_mesh()
  num_examples = input_pipeline.num_pretrain_examples(config)
  steps_per_epoch = input_pipeline.steps_per_epoch(num_examples, config.batch_size)
  total_steps = int(config.num_epochs * steps_per_epoch)
  tx = method.create_optimizer(config, steps_per_epoch)
  checkpointing.check_resumable(workdir, config)
  # Evaluators run at the end, if not before: their data are checked now.
  if config.evals:
    input_pipeline.labeled_eval_splits(config)
  run_evaluators = evaluators.create_evaluators(config, mesh)
  preemption = workdir_lib.install_sigterm_handler()

  with checkpointing.Checkpointer(workdir, max_to_keep=config.keep_checkpoints,
                                  save_every_steps=config.checkpoint_every_steps) as ckpt:
    state = method.create_train_state(jax.random.key(config.seed), config, tx, mesh,
                                      num_examples)
    start_step = 0
    restored = ckpt.restore(state)
    if restored is not None:
      state, start_step = restored
      logging.info('Resumed from the checkpoint of step %d in %s.', start_step, workdir)
    writer = reporting.create_summary_writer(workdir)
    if start_step == 0:
      writer.write_hparams(_hparams(config))
    p_train_step = make_train_step(config, steps_per_epoch, mesh, state)
    logging.info('Pretraining %s (%s) for steps %d-%d (%d per epoch) on %d devices, global '
                 'batch %d, augmenting on the %s.', config.model.name, config.method,
                 start_step + 1, total_steps, steps_per_epoch, jax.device_count(),
                 config.batch_size, input_pipeline.augment_on(config))
    summary = {'start_step': start_step, 'step': start_step, 'total_steps': total_steps,
               'z_std_target': 1 / math.sqrt(config.model.projector_dim)}
    reporter = reporting.ProgressReporter(
        writer, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
        z_std_target=summary['z_std_target'],
        collapse_fraction=config.collapse_warning_fraction)
    batches = input_pipeline.prefetch_to_mesh(
        input_pipeline.create_pretrain_iterator(config, start_step=start_step), mesh)
    if start_step < total_steps:
      # Compiled ahead of the first step, to report what one step holds per device.
      first_batch = next(batches)
      p_train_step = p_train_step.lower(state, first_batch).compile()
      memory = step_memory_mib(p_train_step)
      if memory:
        logging.info('Train step memory per device: %.1f MiB (arguments %.1f, temporaries '
                     '%.1f, outputs %.1f MiB; donated state counted once).', memory['total'],
                     memory['arguments'], memory['temporaries'], memory['outputs'])
        writer.write_scalars(start_step, {'train_step_memory_mib': memory['total']})
      batches = itertools.chain([first_batch], batches)

    def evaluate(step):
      variables = features.backbone_variables(state.params, state.batch_stats)
      for evaluator in run_evaluators.values():
        if evaluators.is_due(evaluator.every_epochs, step, steps_per_epoch, total_steps):
          metrics = evaluator.run(variables)
          summary.update(metrics)
          writer.write_scalars(step, metrics)

    if start_step == 0:
      evaluate(0)
    for step in range(start_step + 1, total_steps + 1):
      state, metrics = p_train_step(state, next(batches))
      reporter.add(step, metrics)
      summary['step'] = step
      if step % config.log_every_steps == 0 or step == total_steps:
        summary.update(reporter.report())
      if ckpt.save_when_due(step, state, config, metrics=metrics, last_step=total_steps,
                            preemption=preemption):
        break
      evaluate(step)
    writer.flush()
  return summary
