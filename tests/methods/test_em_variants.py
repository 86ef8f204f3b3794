"""The EM variants of SimSiam (paper Sec. 5): k-step target network and memory bank."""

import itertools

import jax
import numpy as np
import pytest

import helpers
from simsiam_jax import checkpointing, sharding
from simsiam_jax.methods import simsiam
from simsiam_jax.models import create_model

STEPS_PER_EPOCH = 4


def _run(config, num_steps, mesh=None):
  return helpers.run_steps(config, num_steps, mesh, STEPS_PER_EPOCH)


def _apply_fn(config):
  return create_model(config.model).apply


def test_one_step_alternation_is_simsiam_bit_for_bit(tiny_config):
  online = _run(tiny_config, 3)
  tiny_config.simsiam.target = 'k_step'
  tiny_config.simsiam.target_refresh_steps = 1
  k_step = _run(tiny_config, 3)
  for (state, metrics), (k_state, k_metrics) in zip(online, k_step):
    assert metrics['loss'] == k_metrics['loss']
    jax.tree.map(np.testing.assert_array_equal, state.params, k_state.params)
    jax.tree.map(np.testing.assert_array_equal, state.batch_stats, k_state.batch_stats)


def test_k_step_target_is_refreshed_exactly_every_k_steps(tiny_config):
  tiny_config.simsiam.target = 'k_step'
  tiny_config.simsiam.target_refresh_steps = 3
  mesh = sharding.create_mesh()
  initial, _ = helpers.state_and_step(tiny_config, mesh, STEPS_PER_EPOCH)
  target = jax.device_get(simsiam.encoder_params(initial.params))
  for step, (state, _) in enumerate(_run(tiny_config, 7, mesh), start=1):
    stored = state.method_state[simsiam.TARGET_PARAMS]
    if step % 3 == 0:
      target = simsiam.encoder_params(state.params)
    # Between refreshes the online network moves on and the target stays.
    jax.tree.map(np.testing.assert_array_equal, stored, target)
    if step % 3:
      assert not np.array_equal(stored['projector']['Dense_0']['kernel'],
                                state.params['projector']['Dense_0']['kernel'])


def test_k_step_loss_uses_the_target_encoders_projections(tiny_config):
  """Step 3 of k = 3 predicts z of the step-0 weights, not of the current ones."""
  tiny_config.simsiam.target = 'k_step'
  tiny_config.simsiam.target_refresh_steps = 3
  mesh = sharding.create_mesh()
  history = _run(tiny_config, 3, mesh)
  state_before, _ = history[1]
  _, metrics = history[2]
  batch = next(itertools.islice(helpers.pretrain_batches(tiny_config, mesh), 2, None))
  pairs = simsiam.normalized_view_pairs(batch, tiny_config)
  outputs, _ = simsiam.forward(state_before.params, state_before.batch_stats,
                               _apply_fn(tiny_config), pairs)
  target_params = state_before.method_state[simsiam.TARGET_PARAMS]
  targets, _ = simsiam.forward({**target_params, 'predictor': state_before.params['predictor']},
                               state_before.batch_stats, _apply_fn(tiny_config), pairs)
  expected = simsiam.pair_loss([{**o, 'z1': t['z1'], 'z2': t['z2']}
                                for o, t in zip(outputs, targets)], tiny_config)
  online = simsiam.pair_loss(outputs, tiny_config)
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-5)
  assert abs(float(online) - float(expected)) > 1e-4


@pytest.fixture
def bank_config(tiny_config):
  tiny_config.simsiam.target = 'memory_bank'
  tiny_config.simsiam.bank_momentum = 0.8
  tiny_config.model.predictor = 'none'
  return tiny_config


def test_memory_bank_is_sharded_by_rows_over_the_devices(bank_config):
  state, _ = helpers.state_and_step(bank_config, sharding.create_mesh(), STEPS_PER_EPOCH)
  bank = state.method_state[simsiam.MEMORY_BANK]
  assert bank.shape == (bank_config.data.synthetic_train_examples,
                        bank_config.model.projector_dim)
  assert bank.sharding.spec == jax.sharding.PartitionSpec(sharding.DATA_AXIS)
  assert len(bank.sharding.device_set) == 8
  assert bank.addressable_shards[0].data.shape[0] == bank.shape[0] // 8


def test_memory_bank_updates_only_the_batchs_rows_with_momentum_m(bank_config):
  mesh = sharding.create_mesh()
  state, step_fn = helpers.state_and_step(bank_config, mesh, STEPS_PER_EPOCH)
  rows = state.method_state[simsiam.MEMORY_BANK].shape[0]
  rng = np.random.default_rng(0)
  old_bank = rng.normal(size=state.method_state[simsiam.MEMORY_BANK].shape).astype(np.float32)
  # Half the rows hold an average already; the others are visited for the first time.
  filled = np.arange(rows) % 2 == 0
  state = state.replace(method_state=jax.device_put(
      {simsiam.MEMORY_BANK: old_bank, simsiam.BANK_FILLED: filled},
      sharding.batch_sharding(mesh)))
  batch = next(helpers.pretrain_batches(bank_config, mesh))
  pairs = simsiam.normalized_view_pairs(batch, bank_config)
  outputs, _ = simsiam.forward(jax.device_get(state.params), jax.device_get(state.batch_stats),
                               _apply_fn(bank_config), pairs)
  current = np.mean([outputs[0]['z1'], outputs[0]['z2']], axis=0)
  new_state, metrics = step_fn(state, batch)

  indices = np.asarray(batch['index'])
  assert len(set(indices.tolist())) == len(indices) == bank_config.batch_size
  expected = old_bank.copy()
  expected[indices] = np.where(filled[indices, None], 0.8 * old_bank[indices] + 0.2 * current,
                               current)
  new_bank = np.asarray(new_state.method_state[simsiam.MEMORY_BANK])
  untouched = np.setdiff1d(np.arange(rows), indices)
  np.testing.assert_array_equal(new_bank[untouched], old_bank[untouched])
  np.testing.assert_allclose(new_bank[indices], expected[indices], rtol=1e-5, atol=1e-6)
  new_filled = np.asarray(new_state.method_state[simsiam.BANK_FILLED])
  np.testing.assert_array_equal(new_filled, filled | np.isin(np.arange(rows), indices))

  eta = expected[indices]
  expected_loss = np.mean([helpers.numpy_negative_cosine(outputs[0][z], eta)
                           for z in ('z1', 'z2')])
  np.testing.assert_allclose(metrics['loss'], expected_loss, rtol=1e-5)


@pytest.mark.parametrize('target', ['k_step', 'memory_bank'])
def test_preempted_and_resumed_run_ends_in_the_uninterrupted_state(tiny_config, tmp_path,
                                                                   monkeypatch, target):
  tiny_config.simsiam.target = target
  tiny_config.simsiam.target_refresh_steps = 3
  tiny_config.model.predictor = 'none' if target == 'memory_bank' else 'mlp'
  del tiny_config.evals['knn']  # Not under test here; saves its compilation.
  expected, resumed = helpers.uninterrupted_and_resumed_states(
      tiny_config, tmp_path, monkeypatch, stop_at=5, steps_per_epoch=STEPS_PER_EPOCH)
  assert jax.tree.leaves(resumed['method_state'])
  jax.tree.map(np.testing.assert_array_equal, resumed, expected)


def test_resuming_with_another_target_is_refused_naming_the_field(tiny_config, tmp_path):
  with checkpointing.Checkpointer(tmp_path, max_to_keep=1, save_every_steps=1) as ckpt:
    ckpt.save(1, {'w': np.zeros(2)}, tiny_config)
  tiny_config.simsiam.target = 'k_step'
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'config\.simsiam\.target: online -> k_step$'):
    checkpointing.check_resumable(tmp_path, tiny_config)
  tiny_config.simsiam.target = 'online'
  tiny_config.simsiam.bank_momentum = 0.5  # Not part of the state: may change.
  checkpointing.check_resumable(tmp_path, tiny_config)
