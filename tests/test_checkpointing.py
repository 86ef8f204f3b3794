import asyncio
import json
import logging
import os
import re
import signal
import socket
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from orbax.checkpoint._src.path import temporary_paths
from helpers import make_tiny_config

from simsiam_jax import checkpointing, sharding
from simsiam_jax import workdir as workdir_lib
from simsiam_jax.checkpointing import CheckpointError, Checkpointer
from simsiam_jax.methods import simsiam
from simsiam_jax.models import create_model
from simsiam_jax.train_state import create_train_state


def _mesh(num_devices):
  return sharding.create_mesh(jax.devices()[:num_devices])


@pytest.fixture(scope='module')
def model_state():
  """A tiny SimSiam train state on the 8-device mesh, one update away from its init."""
  config = make_tiny_config()
  tx = simsiam.create_optimizer(config, steps_per_epoch=4)
  state = create_train_state(jax.random.key(0), config, create_model(config.model), tx,
                             _mesh(8))
  grads = jax.tree.map(jnp.ones_like, state.params)
  # Distinct from a fresh init in every leaf: step 1, non-zero momentum, moved statistics.
  state = jax.jit(lambda s: s.apply_gradients(grads=grads).replace(
      batch_stats=jax.tree.map(lambda x: x + 1, s.batch_stats)))(state)
  return state


def _small_state(value, mesh=None):
  mesh = mesh or _mesh(8)
  state = {'params': {'backbone': {'w': jnp.arange(4.0) + value}, 'head': {'b': jnp.ones(2)}},
           'batch_stats': {'backbone': {'mean': jnp.full(3, value)}}, 'step': jnp.int32(value)}
  return jax.device_put(state, sharding.replicated(mesh))


def _zeros_like(state, mesh):
  return jax.device_put(jax.tree.map(jnp.zeros_like, state), sharding.replicated(mesh))


def _assert_trees_equal(actual, expected):
  assert jax.tree.structure(actual) == jax.tree.structure(expected)
  jax.tree.map(np.testing.assert_array_equal, actual, expected)


def _save_steps(workdir, steps, **kwargs):
  options = {'max_to_keep': 5, 'save_every_steps': 1} | kwargs
  with Checkpointer(workdir, **options) as ckpt:
    for step in steps:
      ckpt.save(step, _small_state(step), make_tiny_config())


def _restore_small(workdir):
  with Checkpointer(workdir, max_to_keep=5, save_every_steps=1) as ckpt:
    return ckpt.restore(_zeros_like(_small_state(0), _mesh(8)))


def test_a_save_compiles_nothing_and_keeps_the_array_metadata(tmp_path):
  """Each replicated array is written whole by its first replica: orbax's default would
  slice each array that has a dimension divisible by 8 among the 8 replicas, one compiled
  program per slice (checkpointing.py)."""
  state = jax.device_put({'w': jnp.arange(64.0).reshape(16, 4), 'b': jnp.ones(8)},
                         sharding.replicated(_mesh(8)))
  compiles = []

  def on_duration(event, duration, **kwargs):
    del duration, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  try:
    with Checkpointer(tmp_path, max_to_keep=5, save_every_steps=1) as ckpt:
      ckpt.save(3, state, make_tiny_config())
  finally:
    jax.monitoring.unregister_event_duration_listener(on_duration)
  assert not compiles
  assert (tmp_path / 'checkpoints' / '3' / 'state' / 'array_metadatas').is_dir()
  with Checkpointer(tmp_path, max_to_keep=5, save_every_steps=1) as ckpt:
    restored, step = ckpt.restore(_zeros_like(state, _mesh(8)))
  assert step == 3
  _assert_trees_equal(restored, state)


def test_roundtrip_restores_state_and_config(tmp_path, model_state):
  config = make_tiny_config()
  with Checkpointer(tmp_path, max_to_keep=2, save_every_steps=1) as ckpt:
    assert ckpt.save(1, model_state, config)
  with Checkpointer(tmp_path, max_to_keep=2, save_every_steps=1) as ckpt:
    state, step = ckpt.restore(_zeros_like(model_state, _mesh(8)))
  assert step == 1
  assert int(state.step) == 1
  _assert_trees_equal(state.params, model_state.params)
  _assert_trees_equal(state.batch_stats, model_state.batch_stats)
  _assert_trees_equal(state.opt_state, model_state.opt_state)
  assert checkpointing.restore_config(tmp_path).to_dict() == json.loads(config.to_json())


@pytest.mark.parametrize('saving_devices,restoring_devices', [(8, 1), (1, 8)])
def test_restores_onto_a_mesh_of_another_size(tmp_path, model_state, saving_devices,
                                              restoring_devices):
  saved = jax.device_put(model_state, sharding.replicated(_mesh(saving_devices)))
  with Checkpointer(tmp_path, max_to_keep=2, save_every_steps=1) as ckpt:
    ckpt.save(1, saved, make_tiny_config())
  target_sharding = sharding.replicated(_mesh(restoring_devices))
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=target_sharding), model_state)
  with Checkpointer(tmp_path, max_to_keep=2, save_every_steps=1) as ckpt:
    state, _ = ckpt.restore(abstract)
  _assert_trees_equal(state, model_state)
  for leaf in jax.tree.leaves(state):
    assert leaf.sharding == target_sharding


def test_restore_returns_none_without_checkpoint(tmp_path):
  assert _restore_small(tmp_path) is None


def test_saves_every_n_steps_and_at_force_and_keeps_last_k(tmp_path):
  config = make_tiny_config()
  with Checkpointer(tmp_path, max_to_keep=2, save_every_steps=3) as ckpt:
    saved = [step for step in range(1, 8)
             if ckpt.save(step, _small_state(step), config, force=step == 7)]
    assert not ckpt.save(7, _small_state(0), config, force=True)  # Never overwritten.
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 7
  assert saved == [3, 6, 7]
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['6', '7']
  state, step = _restore_small(tmp_path)
  assert step == 7
  _assert_trees_equal(state, _small_state(7))


def _garble_files(directory):
  for root, _, files in os.walk(directory):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'\x00garbage\xff' * 3)


def _remove_array_data(directory):
  for root, _, files in os.walk(directory):
    if os.path.basename(root) == 'd':
      for name in files:
        os.remove(os.path.join(root, name))


# Reads that the failed restore left in flight report to its closed event loop; the tools
# drop these (cli.quiet_library_output, tests/test_main.py).
@pytest.mark.filterwarnings(
    'ignore:(?s).*Event loop is closed:pytest.PytestUnraisableExceptionWarning')
@pytest.mark.parametrize('corrupt', [_garble_files, _remove_array_data])
def test_unreadable_latest_checkpoint_falls_back_to_previous(tmp_path, caplog, corrupt):
  _save_steps(tmp_path, [1, 2])
  latest = tmp_path / 'checkpoints' / '2'
  corrupt(latest / 'state')
  with caplog.at_level(logging.WARNING):
    state, step = _restore_small(tmp_path)
  assert step == 1
  _assert_trees_equal(state, _small_state(1))
  assert str(latest) in caplog.text
  # The error without the JSON specs that tensorstore appends (2,000 characters).
  assert 'tensorstore_spec' not in caplog.text
  # Set aside, so that the resumed run can save step 2 again.
  assert [name for name in os.listdir(tmp_path / 'checkpoints')
          if name.startswith('2.corrupt')]
  _save_steps(tmp_path, [2])
  assert _restore_small(tmp_path)[1] == 2


def test_nothing_is_set_aside_when_no_checkpoint_restores(tmp_path):
  _save_steps(tmp_path, [1, 2])
  wrong_target = {'other': jnp.zeros(3)}
  with Checkpointer(tmp_path, max_to_keep=5, save_every_steps=1) as ckpt:
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path / 'checkpoints' / '1'))):
      ckpt.restore(wrong_target)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2']


def test_unfinished_save_is_ignored_and_cleaned_up(tmp_path, monkeypatch):
  _save_steps(tmp_path, [1, 2])
  # Orbax cleans up in a background thread; a slow one (as under load) must still finish
  # before the Checkpointer is done.
  cleanup = temporary_paths.cleanup_temporary_paths

  async def slow_cleanup(*args, **kwargs):
    await asyncio.sleep(1)
    await cleanup(*args, **kwargs)

  monkeypatch.setattr(temporary_paths, 'cleanup_temporary_paths', slow_cleanup)
  checkpoints = tmp_path / 'checkpoints'
  # What a kill during the save of step 3 leaves: a complete-looking tmp directory.
  unfinished = checkpoints / '3.orbax-checkpoint-tmp-1700000000000000'
  os.rename(checkpoints / '2', unfinished)
  assert checkpointing.restore_config(tmp_path).model.width == 4  # Reads step 1.
  state, step = _restore_small(tmp_path)
  assert step == 1
  _assert_trees_equal(state, _small_state(1))
  assert not unfinished.exists()  # Removed by the writing Checkpointer.


def test_missing_checkpoint_errors_name_the_path(tmp_path):
  empty = tmp_path / 'empty'
  (empty / 'checkpoints').mkdir(parents=True)
  for path in (empty, tmp_path / 'does_not_exist'):
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
      checkpointing.restore_config(path)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
      checkpointing.restore_pretrained_variables(path)


def test_restore_pretrained_variables(tmp_path, model_state):
  with Checkpointer(tmp_path, max_to_keep=2, save_every_steps=1) as ckpt:
    ckpt.save(1, model_state, make_tiny_config())
  variables, stored_config = checkpointing.restore_pretrained_variables(
      tmp_path / 'checkpoints', make_tiny_config())
  expected = {'params': {'backbone': model_state.params['backbone']},
              'batch_stats': {'backbone': model_state.batch_stats['backbone']}}
  _assert_trees_equal(variables, expected)
  assert all(isinstance(leaf, np.ndarray) for leaf in jax.tree.leaves(variables))
  assert stored_config.model.name == 'resnet18'


def test_model_config_mismatch_names_the_field(tmp_path):
  _save_steps(tmp_path, [1])
  config = make_tiny_config()
  config.model.width = 16
  config.num_epochs = 100  # Not a model field: allowed to differ.
  with pytest.raises(CheckpointError,
                     match=r'config\.model\.width: 4 -> 16$') as error:
    checkpointing.restore_pretrained_variables(tmp_path, config)
  assert str(tmp_path) in str(error.value)


def _lock_path(directory):
  return directory / workdir_lib.LOCK_FILENAME


def test_second_run_on_a_live_workdir_fails_and_overwrites_nothing(tmp_path):
  config = make_tiny_config()
  with Checkpointer(tmp_path, max_to_keep=2, save_every_steps=1) as first:
    first.save(1, _small_state(1), config)
    lock_message = f'process {os.getpid()} .*{re.escape(str(_lock_path(tmp_path)))}'
    with pytest.raises(workdir_lib.WorkdirError, match=lock_message):
      Checkpointer(tmp_path, max_to_keep=2, save_every_steps=1)
    assert first.save(2, _small_state(2), config)
  assert not _lock_path(tmp_path).exists()
  assert _restore_small(tmp_path)[1] == 2


def _write_lock(directory, pid, hostname):
  _lock_path(directory).write_text(json.dumps({'pid': pid, 'hostname': hostname}))


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  dead = subprocess.Popen(['true'])
  dead.wait()
  _write_lock(tmp_path, dead.pid, socket.gethostname())
  with caplog.at_level(logging.WARNING):
    with Checkpointer(tmp_path, max_to_keep=2, save_every_steps=1):
      assert json.loads(_lock_path(tmp_path).read_text())['pid'] == os.getpid()
  assert str(_lock_path(tmp_path)) in caplog.text


def test_lock_of_another_host_is_respected(tmp_path):
  _write_lock(tmp_path, 1, 'some-other-host')
  with pytest.raises(workdir_lib.WorkdirError, match='some-other-host'):
    Checkpointer(tmp_path, max_to_keep=2, save_every_steps=1)
  assert not (tmp_path / 'checkpoints').exists()


@pytest.mark.parametrize('bad_value', [np.nan, np.inf, -np.inf])
def test_check_finite_names_the_step(bad_value):
  checkpointing.check_finite(5, {'loss': jnp.float32(-0.9), 'z_std': 0.06})
  with pytest.raises(checkpointing.NonFiniteLossError, match=r'step 12\b.*loss'):
    checkpointing.check_finite(12, {'loss': jnp.float32(bad_value), 'z_std': 0.06})


@pytest.fixture
def restore_sigterm_handler():
  previous = signal.getsignal(signal.SIGTERM)
  yield
  signal.signal(signal.SIGTERM, previous)


def test_sigterm_sets_the_preemption_flag(restore_sigterm_handler):
  del restore_sigterm_handler
  flag = workdir_lib.install_sigterm_handler()
  assert not flag.requested
  os.kill(os.getpid(), signal.SIGTERM)
  assert flag.requested


def test_async_save_survives_the_state_being_donated_right_after(tmp_path):
  state = _small_state(3)
  with Checkpointer(tmp_path, max_to_keep=2, save_every_steps=1) as ckpt:
    assert ckpt.save(3, state, make_tiny_config())
    for leaf in jax.tree.leaves(state):
      leaf.delete()  # What donating the state to the next train step does.
  restored, _ = _restore_small(tmp_path)
  _assert_trees_equal(restored, _small_state(3))
