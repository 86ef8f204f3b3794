"""Checkpoints of a run: the train state and its config, saved asynchronously by orbax.

Layout: `workdir/checkpoints/<step>/{state,config}`. Orbax writes a step into
`<step>.orbax-checkpoint-tmp-*` and renames it when complete, so a run killed mid-save
leaves no directory that looks like a step. While a `Checkpointer` is open, it holds the
workdir's lock (workdir.py), which keeps a second run from writing into the same workdir.

The loop this module is written for:

  preemption = workdir.install_sigterm_handler()
  with Checkpointer(workdir, max_to_keep=3, save_every_steps=1000) as ckpt:
    state = create_train_state(...)
    restored = ckpt.restore(state)  # None on a fresh start.
    ...
    for step in range(first_step, num_steps + 1):
      state, metrics = train_step(state, batch)
      if ckpt.save_when_due(step, state, config, metrics=metrics, last_step=num_steps,
                            preemption=preemption):
        break  # Preempted, and saved.

`preemption.requested` is per host: a pod must not act on it alone (a save is collective),
so multi-host runs rely on `ckpt.reached_preemption(step)`, JAX's preemption sync point on
which all hosts agree; it needs `jax.distributed.initialize()` with the preemption service
(the default on Cloud TPU) and is False otherwise.
"""

import contextlib
import json
import time
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils

from simsiam_jax import workdir as workdir_lib

CHECKPOINT_SUBDIR = 'checkpoints'
STATE = 'state'
CONFIG = 'config'
# The subtree of params and batch_stats that linear evaluation keeps.
BACKBONE = 'backbone'
# Suffix of step directories that failed to restore, renamed so that orbax no longer
# counts them as steps (and a new save of that step is possible) but kept for inspection.
CORRUPT_SUFFIX = '.corrupt'

# Each array is written by its first replica, as orbax already does on GPUs. Orbax's default
# elsewhere splits a replicated array among its replicas, and each slice is a program to
# compile at a run's first save: 120 programs for the tiny test model, 4 s of compiles on a
# CPU, in every process that saves. Splitting only pays for states of many GB written from
# many hosts; ResNet-50's with its momentum is 0.2 GB. Orbax takes the choice only as an
# argument of a new handler, which would drop the registered one's array metadata store, so
# the registered handler is changed in place (tests/test_checkpointing.py checks it).
ocp.type_handlers.get_type_handler(jax.Array)._use_replica_parallel = False  # pylint: disable=protected-access


class CheckpointError(ValueError):
  """A checkpoint or workdir problem; the message names the path."""


class NonFiniteLossError(FloatingPointError):
  """Metrics of a step are NaN or infinite; the message names the step."""


def checkpoint_dir(workdir: epath.PathLike) -> epath.Path:
  return epath.Path(workdir) / CHECKPOINT_SUBDIR


class Checkpointer:
  """Saves and restores the train state and config in `workdir/checkpoints`.

  Saves are asynchronous: `save` returns once the arrays are copied off the devices.
  Only one Checkpointer may be open on a workdir at a time (see workdir.acquire_lock).
  """

  def __init__(self, workdir: epath.PathLike, *, max_to_keep: int, save_every_steps: int):
    self._lock_path = workdir_lib.acquire_lock_for_every_process(workdir)
    try:
      options = ocp.CheckpointManagerOptions(
          save_decision_policy=ocp.checkpoint_managers.AnySavePolicy([
              ocp.checkpoint_managers.FixedIntervalPolicy(save_every_steps),
              ocp.checkpoint_managers.PreemptionCheckpointingPolicy()]),
          preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
          # Safe because the lock guarantees no other run is writing here.
          cleanup_tmp_directories=True,
          enable_async_checkpointing=True)
      self._manager = ocp.CheckpointManager(
          checkpoint_dir(workdir), options=options,
          item_handlers=_item_handlers(ocp.StandardCheckpointHandler()))
      # Orbax removes unfinished saves in a thread that only its next save waits for; a
      # Checkpointer that only restores would otherwise close with them still there.
      self._manager._maybe_await_cleanup_tmp_directory()  # pylint: disable=protected-access
    except BaseException:
      self._release_lock()
      raise

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def should_save(self, step: int) -> bool:
    """Whether `save(step, ...)` without `force` would write a checkpoint."""
    return self._manager.should_save(step)

  def reached_preemption(self, step: int) -> bool:
    """JAX's multi-host preemption sync point; False where the service is off."""
    return self._manager.reached_preemption(step)

  def save(self, step: int, state: Any, config: ml_collections.ConfigDict, *,
           force: bool = False) -> bool:
    """Starts saving `state` and `config` as `step`; returns whether a save started.

    Without `force`, saves every `save_every_steps` steps (and at a preemption sync
    point). A step that is already saved is never overwritten.
    """
    if step in self._manager.all_steps() or not (force or self.should_save(step)):
      return False
    args = ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                 CONFIG: ocp.args.JsonSave(_config_to_json(config))})
    return self._manager.save(step, args=args, force=True)

  def save_when_due(self, step: int, state: Any, config: ml_collections.ConfigDict, *,
                    metrics: Any, last_step: int, preemption) -> bool:
    """The loop's save after `step`: at the last step, every `save_every_steps`, and when
    preempted (`preemption.requested`, a workdir.PreemptionFlag, or JAX's sync point).

    Non-finite `metrics` raise NonFiniteLossError instead, so the last good checkpoint is
    never replaced by one of a diverged run. Returns whether the loop must stop (preempted).
    """
    stop = preemption.requested or self.reached_preemption(step)
    if stop or step == last_step or self.should_save(step):
      check_finite(step, metrics)
      self.save(step, state, config, force=True)
    if stop:
      logging.warning('Preempted: saved step %d; rerun the same command to resume.', step)
    return stop

  def restore(self, target: Any) -> tuple[Any, int] | None:
    """Restores the newest readable checkpoint into the structure and shardings of `target`.

    `target` is a train state (e.g. freshly created on the current mesh) or a tree of
    `jax.ShapeDtypeStruct`s with shardings; the mesh may differ from the saving run's.
    Newer steps that fail to restore are logged, renamed to `<step>.corrupt-<time>` and
    skipped. Returns (state, step), or None if there is no checkpoint.
    """
    abstract_state = jax.tree.map(_abstract_array, target)

    def restore_state(step):
      args = ocp.args.Composite(**{STATE: ocp.args.StandardRestore(abstract_state)})
      return self._manager.restore(step, args=args)[STATE]

    restored = _restore_newest_readable(self._manager, restore_state)
    if restored is None:
      return None
    step, state, unreadable_steps = restored
    if unreadable_steps:
      _set_aside(self._manager, unreadable_steps)
    return state, step

  def wait_until_finished(self):
    self._manager.wait_until_finished()

  def close(self):
    """Waits for pending saves, then releases the workdir."""
    try:
      self._manager.close()
    finally:
      self._release_lock()

  def _release_lock(self):
    if self._lock_path is not None:
      workdir_lib.release_lock(self._lock_path)
      self._lock_path = None


def _newest_stored_config(manager: ocp.CheckpointManager) -> ml_collections.ConfigDict | None:
  """The config stored with the newest readable checkpoint, or None if there is none."""

  def restore_json(step):
    return manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))

  restored = _restore_newest_readable(manager, restore_json)
  return None if restored is None else ml_collections.ConfigDict(restored[1][CONFIG])


def restore_config(workdir_or_checkpoint_dir: epath.PathLike) -> ml_collections.ConfigDict:
  """The config stored with the newest readable checkpoint of a run."""
  with _read_only_manager(workdir_or_checkpoint_dir, ocp.StandardCheckpointHandler()) as manager:
    stored_config = _newest_stored_config(manager)
  if stored_config is None:
    raise CheckpointError(f'No checkpoint in {manager.directory}.')
  return stored_config


def check_resumable(workdir: epath.PathLike, config: ml_collections.ConfigDict,
                    fields: Callable[[dict[str, Any]], dict[str, Any]] | None = None):
  """Raises CheckpointError naming each of `fields` (old -> new) in which `config` differs
  from the run whose checkpoints are in `workdir`; returns if there are none.

  `fields` picks from a flattened config what shapes the run's checkpointed state; the
  default, `pretraining_state_fields`. Checked before the run opens its checkpoints, so that
  a mismatch leaves them untouched (a restore into the wrong shapes would fail on every step
  and set them aside).
  """
  if checkpoint_dir(workdir).is_dir():
    with _read_only_manager(workdir, ocp.StandardCheckpointHandler()) as manager:
      stored_config = _newest_stored_config(manager)
    if stored_config is not None:
      _check_fields(stored_config, config, manager.directory, 'state',
                    fields or pretraining_state_fields)
  # Every process has looked for the directory before the checkpointer of any creates it:
  # a process that found it would open a manager (a collective) the others never join.
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('simsiam_jax.checkpointing.check_resumable')


def restore_pretrained_variables(
    pretrained_workdir: epath.PathLike, config: ml_collections.ConfigDict | None = None, *,
    parts: tuple[str, ...] = (BACKBONE,)) -> tuple[dict[str, Any], ml_collections.ConfigDict]:
  """The pretrained network's {'params', 'batch_stats'} (numpy) of its `parts` (by default
  the backbone; ('backbone', 'projector') for the encoder f) and the stored config.

  Reads only those arrays, with no optimizer or mesh needed. If `config` is given, its model
  must match the pretrained one (`check_model_config`).
  """
  with _read_only_manager(pretrained_workdir, ocp.PyTreeCheckpointHandler()) as manager:

    def restore_parts(step):
      stored = manager.item_metadata(step)[STATE].tree
      # A head without BatchNorm (MoCo v2's) has no statistics.
      item = {collection: {part: stored[collection][part] for part in parts
                           if part in stored[collection]}
              for collection in ('params', 'batch_stats')}
      as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
      args = ocp.args.Composite(**{
          STATE: ocp.args.PyTreeRestore(item=item, restore_args=as_numpy, partial_restore=True),
          CONFIG: ocp.args.JsonRestore()})
      return manager.restore(step, args=args)

    _, restored, _ = _restore_newest_readable_or_raise(manager, restore_parts)
  stored_config = ml_collections.ConfigDict(restored[CONFIG])
  if config is not None:
    check_model_config(stored_config, config, manager.directory)
  return restored[STATE], stored_config


# Fields that shape the train state besides config.model, with their value in checkpoints
# written before they existed.
STATE_FIELDS = {'method': 'simsiam', 'simsiam.target': 'online', 'optim.optimizer': 'sgd',
                'moco_v2.queue_size': 65_536, 'swav.num_prototypes': 3000}


# Model fields that change how the network computes, not its parameters.
_COMPUTE_ONLY_MODEL_FIELDS = ('model.remat',)


def model_fields(flat_config: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in flat_config.items()
          if k.startswith('model.') and k not in _COMPUTE_ONLY_MODEL_FIELDS}


def pretraining_state_fields(flat_config: dict[str, Any]) -> dict[str, Any]:
  return {**model_fields(flat_config),
          **{k: flat_config.get(k, default) for k, default in STATE_FIELDS.items()}}


def check_model_config(stored_config: ml_collections.ConfigDict,
                       config: ml_collections.ConfigDict, checkpoint_path: epath.PathLike):
  """Raises CheckpointError naming every `model.*` field that differs, as
  `config.<field>: <checkpoint's> -> <config's>`."""
  _check_fields(stored_config, config, checkpoint_path, 'model', model_fields)


def _check_fields(stored_config: ml_collections.ConfigDict, config: ml_collections.ConfigDict,
                  checkpoint_path: epath.PathLike, what: str,
                  fields: Callable[[dict[str, Any]], dict[str, Any]]):
  # Compared in their JSON form, as stored (tuples become lists).
  stored, new = (fields(traverse_util.flatten_dict(_config_to_json(c), sep='.'))
                 for c in (stored_config, config))
  missing = '<missing>'
  differences = [f'config.{field}: {stored.get(field, missing)} -> {new.get(field, missing)}'
                 for field in sorted(stored.keys() | new.keys())
                 if stored.get(field, missing) != new.get(field, missing)]
  if differences:
    raise CheckpointError(f'the {what} of the checkpoints in {checkpoint_path} (old) differs '
                          'from this config (new): ' + '; '.join(differences))


def check_finite(step: int, metrics: Any):
  """Raises NonFiniteLossError if any metric is NaN or infinite."""
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(metrics))
  bad = [f'{jax.tree_util.keystr(path)}={value}' for path, value in leaves
         if not np.all(np.isfinite(value))]
  if bad:
    raise NonFiniteLossError(f'Non-finite metrics at step {step}: {", ".join(bad)}. Stopping '
                             'without saving, so the last checkpoint stays good.')


def _item_handlers(state_handler: ocp.CheckpointHandler) -> dict[str, ocp.CheckpointHandler]:
  # Naming the handlers up front lets a restore read one item without orbax warning
  # that it cannot restore the others.
  return {STATE: state_handler, CONFIG: ocp.JsonCheckpointHandler()}


@contextlib.contextmanager
def _read_only_manager(workdir_or_checkpoint_dir: epath.PathLike,
                       state_handler: ocp.CheckpointHandler):
  path = epath.Path(workdir_or_checkpoint_dir)
  directory = path / CHECKPOINT_SUBDIR if (path / CHECKPOINT_SUBDIR).is_dir() else path
  if not directory.is_dir():
    raise CheckpointError(f'No checkpoint directory at {directory}.')
  # save_interval_steps=0 and create=False are what read_only sets anyway; passing them
  # avoids a warning per option.
  options = ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False)
  manager = ocp.CheckpointManager(directory, options=options,
                                  item_handlers=_item_handlers(state_handler))
  try:
    yield manager
  finally:
    manager.close()


def _config_to_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  # Best effort, so that an odd config value cannot make a save fail.
  return json.loads(config.to_json_best_effort())


def _abstract_array(x):
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
  return x


def _step_path(manager: ocp.CheckpointManager, step: int) -> epath.Path:
  return manager.directory / str(step)


def _restore_newest_readable(manager: ocp.CheckpointManager, restore_step):
  """(step, restore_step(step), newer unreadable steps) for the newest step that restores.

  None if there are no steps; CheckpointError if none restores.
  """
  failures = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return step, restore_step(step), [failed_step for failed_step, _ in failures]
    except Exception as error:  # pylint: disable=broad-except
      # Damaged files surface as many types (ValueError, OSError, tensorstore errors).
      logging.warning('Cannot restore checkpoint %s (%s); trying the previous one.',
                      _step_path(manager, step), _error_text(error))
      failures.append((step, error))
  if not failures:
    return None
  details = '; '.join(f'{_step_path(manager, step)}: {_error_text(error)}'
                      for step, error in failures)
  raise CheckpointError(f'No checkpoint in {manager.directory} could be restored: '
                        f'{details}') from failures[0][1]


def _error_text(error: Exception) -> str:
  """`Type: message`, less the JSON specs that tensorstore appends to its errors (two of
  about 1,000 characters each, after the file and the key it could not read)."""
  return f'{type(error).__name__}: {str(error).split(" [tensorstore_spec", 1)[0]}'


def _restore_newest_readable_or_raise(manager: ocp.CheckpointManager, restore_step):
  restored = _restore_newest_readable(manager, restore_step)
  if restored is None:
    raise CheckpointError(f'No checkpoint in {manager.directory}.')
  return restored


def _set_aside(manager: ocp.CheckpointManager, steps):
  """Renames unreadable steps out of orbax's view, so the run can save them again."""
  # Only after an older step restored into the same target: that rules out the target
  # (rather than the files) being what is wrong.
  if jax.process_index() == 0:
    for step in steps:
      path = _step_path(manager, step)
      corrupt_path = path.parent / f'{path.name}{CORRUPT_SUFFIX}-{int(time.time())}'
      logging.warning('Moving unreadable checkpoint %s to %s.', path, corrupt_path)
      path.rename(corrupt_path)
  multihost_utils.sync_global_devices('simsiam_jax.checkpointing.set_aside')
  manager.reload()
