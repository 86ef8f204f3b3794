"""The methods of the paper's Table 4 (SimCLR, MoCo v2, BYOL, SwAV): each update rule through
the real train step (its loss against a float64 numpy reference; the losses themselves are
checked against their official code in test_official_losses.py), the sharded step against
the single-device one, and resuming after a preemption."""

import jax
import numpy as np
import pytest
from scipy.special import logsumexp

import helpers
from simsiam_jax import checkpointing, losses, methods, optimizer, sharding, train
from simsiam_jax.methods import byol, common, moco_v2, swav

STEPS_PER_EPOCH = 4


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_nt_xent(z1, z2, temperature):
  """Every one of the 2N views is an anchor: its positive is its image's other view, its
  negatives the other 2N - 2 views; the sum over anchors, divided by N."""
  h = _unit(np.concatenate([z1, z2]))
  n = len(z1)
  total = 0.0
  for i in range(2 * n):
    others = [j for j in range(2 * n) if j != i]
    total += logsumexp(h[others] @ h[i] / temperature) - h[(i + n) % (2 * n)] @ h[i] / temperature
  return total / n


def numpy_info_nce(q, k, queue, temperature):
  q, k, queue = _unit(q), _unit(k), np.asarray(queue, np.float64)
  losses_ = [logsumexp(np.concatenate([[q[i] @ k[i]], queue @ q[i]]) / temperature) -
             q[i] @ k[i] / temperature for i in range(len(q))]
  return np.mean(losses_)


def numpy_sinkhorn(scores, epsilon, iterations):
  """[batch, prototypes]: alternately every prototype gets 1/K of the mass, every example 1/B;
  the rows are then scaled to sum to 1."""
  q = np.exp(np.asarray(scores, np.float64) / epsilon)
  batch, num_prototypes = q.shape
  q /= q.sum()
  for _ in range(iterations):
    q /= q.sum(axis=0, keepdims=True) * num_prototypes
    q /= q.sum(axis=1, keepdims=True) * batch
  return q * batch


def numpy_swapped_prediction(codes, scores, temperature):
  logits = np.asarray(scores, np.float64) / temperature
  log_probs = logits - logsumexp(logits, axis=1, keepdims=True)
  return -np.mean(np.sum(codes * log_probs, axis=1))


def _hand_made(rows, dim, seed=0):
  """Views of a batch: pairs of nearby vectors, so positives are more alike than negatives."""
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(rows, dim))
  return (base + 0.3 * rng.normal(size=(rows, dim))).astype(np.float32), (
      base + 0.3 * rng.normal(size=(rows, dim))).astype(np.float32)


def test_byol_regression_is_two_minus_twice_the_cosine():
  p, z = _hand_made(5, 3)
  cosine = np.sum(_unit(p) * _unit(z), axis=1)
  np.testing.assert_allclose(losses.byol_regression(p, 7 * z), np.mean(2 - 2 * cosine),
                             rtol=1e-5)
  np.testing.assert_allclose(losses.byol_regression(p, 3 * p), 0, atol=1e-6)


@pytest.mark.parametrize('loss', ['nt_xent', 'sinkhorn'])
def test_batch_sums_span_all_eight_devices(loss):
  """Jitted over 8 devices with the batch split, SimCLR's negatives and SwAV's equipartition
  are the whole batch's: the single-device (numpy) values, not those of each device's rows."""
  z1, z2 = _hand_made(16, 8)
  placement = sharding.batch_sharding(sharding.create_mesh())
  z1_sharded, z2_sharded = jax.device_put((z1, z2), placement)
  assert len(z1_sharded.sharding.device_set) == 8
  if loss == 'nt_xent':
    value = jax.jit(losses.nt_xent, static_argnums=2)(z1_sharded, z2_sharded, 0.1)
    np.testing.assert_allclose(value, numpy_nt_xent(z1, z2, 0.1), rtol=1e-5)
    per_device = np.mean([numpy_nt_xent(z1[i:i + 2], z2[i:i + 2], 0.1) for i in range(0, 16, 2)])
    assert abs(float(value) - per_device) > 0.1
  else:
    scores = _unit(z1)[:, :4].astype(np.float32)
    codes = jax.jit(losses.sinkhorn, static_argnums=(1, 2))(
        jax.device_put(scores, placement), 0.05, 3)
    np.testing.assert_allclose(codes, numpy_sinkhorn(scores, 0.05, 3), rtol=1e-4, atol=1e-7)


@pytest.fixture(scope='module')
def eight_device_runs():
  """method -> (initial state, [(state, metrics)] of the 8 steps (2 epochs) of its tiny
  config on 8 devices), on the host; run once for the module."""
  runs = {}

  def run(method):
    if method not in runs:
      config = method_config(helpers.make_tiny_config(), method)
      mesh = sharding.create_mesh()
      state, step = _initial_state(config, mesh)
      runs[method] = (jax.device_get(state), helpers.steps_from(config, state, step, mesh, 8))
    return runs[method]

  return run


def method_config(config, method):
  """The tiny config running `method`, with its state small enough for the tests."""
  config.method = method
  config.moco_v2.queue_size = 64  # Two steps of 32 keys: the queue wraps every other step.
  config.swav.num_prototypes = 10
  config.swav.freeze_prototypes_epochs = 0.5  # The first 2 steps.
  methods.get(method).validate(config)
  return config


def _initial_state(config, mesh=None):
  return helpers.state_and_step(config, mesh or sharding.create_mesh(), STEPS_PER_EPOCH)


def _first_batch(config, mesh=None):
  return next(helpers.pretrain_batches(config, mesh or sharding.create_mesh()))


def _views(config):
  return common.normalized_views(_first_batch(config), config)


def _perturbed(tree, seed):
  leaves, treedef = jax.tree.flatten(jax.device_get(tree))
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [x + 0.05 * rng.normal(size=x.shape).astype(x.dtype)
                                      for x in leaves])


def _encode(state, params, batch_stats, views):
  projections, _ = common.encode_views(state.apply_fn, params, batch_stats, views)
  return [np.asarray(z) for z in projections]


def test_simclr_step_minimises_nt_xent_of_the_encoders_projections(tiny_config,
                                                                   eight_device_runs):
  config = method_config(tiny_config, 'simclr')
  state, [(_, metrics), *_] = eight_device_runs('simclr')
  z1, z2 = _encode(state, state.params, state.batch_stats, _views(config))
  np.testing.assert_allclose(metrics['loss'],
                             numpy_nt_xent(z1, z2, config.simclr.temperature), rtol=1e-5)
  assert 'predictor' not in state.params


def test_byol_target_is_a_moving_average_with_a_cosine_tau(tiny_config):
  config = method_config(tiny_config, 'byol')
  state, step = _initial_state(config)
  # A target apart from the online network, so the average is visible.
  old_target = _perturbed(state.method_state[common.TARGET_PARAMS], 0)
  state = state.replace(method_state={**state.method_state, common.TARGET_PARAMS: old_target})
  views = _views(config)
  z1_target, z2_target = _encode(state, old_target,
                                 state.method_state[common.TARGET_BATCH_STATS], views)
  outputs = state.apply_fn({'params': state.params, 'batch_stats': state.batch_stats}, *views,
                           train=True, mutable=['batch_stats'])[0]
  new_state, metrics = step(state, _first_batch(config))

  expected_loss = sum(np.mean(2 + 2 * helpers.numpy_negative_cosine(outputs[p], z))
                      for p, z in (('p1', z2_target), ('p2', z1_target)))
  np.testing.assert_allclose(metrics['loss'], expected_loss, rtol=1e-5)
  tau = config.byol.tau_base  # At step 0.
  np.testing.assert_allclose(metrics['tau'], tau, rtol=1e-7)
  online = common.encoder_part(jax.device_get(new_state.params))
  expected_target = jax.tree.map(lambda t, o: t + (1 - tau) * (o - t), old_target, online)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               jax.device_get(new_state.method_state[common.TARGET_PARAMS]), expected_target)

  total = 100
  taus = [float(byol.target_decay(s, 0.99, total)) for s in (0, 25, 50, 100, 150)]
  np.testing.assert_allclose(taus, [0.99, 1 - 0.01 * (1 + np.cos(np.pi / 4)) / 2, 0.995, 1, 1],
                             rtol=1e-6)


def test_moco_key_encoder_moves_before_the_step_and_the_keys_enter_the_queue(tiny_config):
  config = method_config(tiny_config, 'moco_v2')
  mesh = sharding.create_mesh()
  state, step = _initial_state(config, mesh)
  m = config.moco_v2.momentum
  old_key = _perturbed(state.method_state[common.TARGET_PARAMS], 1)
  queue = np.asarray(state.method_state[moco_v2.QUEUE])
  # The last free rows: the step fills the queue up to its end and wraps the position.
  position = config.moco_v2.queue_size - moco_v2.keys_per_step(config)
  state = state.replace(method_state=jax.device_put(
      {**state.method_state, common.TARGET_PARAMS: old_key,
       moco_v2.QUEUE_POSITION: np.int32(position)},
      jax.tree.map(lambda x: x.sharding, state.method_state)))
  views = _views(config)
  online = common.encoder_part(jax.device_get(state.params))
  key_params = jax.tree.map(lambda k, q: m * k + (1 - m) * q, old_key, online)
  k1, k2 = _encode(state, key_params, state.method_state[common.TARGET_BATCH_STATS], views)
  q1, q2 = _encode(state, state.params, state.batch_stats, views)
  new_state, metrics = step(state, _first_batch(config, mesh))

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
               jax.device_get(new_state.method_state[common.TARGET_PARAMS]), key_params)
  t = config.moco_v2.temperature
  np.testing.assert_allclose(
      metrics['loss'], (numpy_info_nce(q1, k2, queue, t) + numpy_info_nce(q2, k1, queue, t)) / 2,
      rtol=1e-5)
  new_queue = np.asarray(new_state.method_state[moco_v2.QUEUE])
  np.testing.assert_array_equal(new_queue[:position], queue[:position])
  np.testing.assert_allclose(new_queue[position:], _unit(np.concatenate([k1, k2])), rtol=1e-5,
                             atol=1e-6)
  assert int(new_state.method_state[moco_v2.QUEUE_POSITION]) == 0
  assert new_state.method_state[moco_v2.QUEUE].sharding.spec == jax.sharding.PartitionSpec(
      sharding.DATA_AXIS)


def test_asymmetric_moco_queries_with_view1_and_enqueues_view2s_keys(tiny_config):
  config = method_config(tiny_config, 'moco_v2')
  config.moco_v2.symmetric = False
  config.moco_v2.queue_size = 12
  q1, q2 = _hand_made(4, 6, seed=4)
  k1, k2 = _hand_made(4, 6, seed=5)
  queue = _unit(np.random.default_rng(6).normal(size=(12, 6))).astype(np.float32)
  np.testing.assert_allclose(moco_v2.contrastive_loss((q1, q2), (k1, k2), queue, config),
                             numpy_info_nce(q1, k2, queue, config.moco_v2.temperature),
                             rtol=1e-5)
  state = moco_v2.enqueue({moco_v2.QUEUE: queue, moco_v2.QUEUE_POSITION: np.int32(8)},
                          (k1, k2), config)
  np.testing.assert_allclose(state[moco_v2.QUEUE][8:], _unit(k2), rtol=1e-6)
  np.testing.assert_array_equal(state[moco_v2.QUEUE][:8], queue[:8])
  assert int(state[moco_v2.QUEUE_POSITION]) == 0


def test_swav_prototypes_are_unit_rows_frozen_for_the_first_steps(tiny_config,
                                                                   eight_device_runs):
  config = method_config(tiny_config, 'swav')
  state, history = eight_device_runs('swav')
  views = _views(config)
  prototypes = _unit(state.params[swav.PROTOTYPES])
  z1, z2 = _encode(state, swav.network_params(state.params), state.batch_stats, views)
  s1, s2 = (_unit(z) @ prototypes.T for z in (z1, z2))
  sw = config.swav
  codes1, codes2 = (numpy_sinkhorn(s, sw.epsilon, sw.sinkhorn_iterations) for s in (s1, s2))
  expected_loss = (numpy_swapped_prediction(codes1, s2, sw.temperature) +
                   numpy_swapped_prediction(codes2, s1, sw.temperature)) / 2

  np.testing.assert_allclose(history[0][1]['loss'], expected_loss, rtol=1e-4)
  assert swav.freeze_steps(config, STEPS_PER_EPOCH) == 2
  for frozen_state, _ in history[:2]:  # Normalised, not trained.
    np.testing.assert_allclose(frozen_state.params[swav.PROTOTYPES], prototypes, rtol=1e-6)
    assert not np.allclose(frozen_state.params['projector']['Dense_1']['kernel'],
                           state.params['projector']['Dense_1']['kernel'])
  assert not np.allclose(history[2][0].params[swav.PROTOTYPES], prototypes, atol=1e-4)


def test_frozen_sgd_steps_like_sgd_started_at_the_end_of_the_freeze():
  """Until step N nothing moves, weight decay and momentum included; from step N the update is
  a fresh SGD's at the schedule's lr of step N."""
  optim = helpers.make_tiny_config().optim
  schedule = lambda count: 0.1 * (count + 1)
  params = {'w': np.array([1.0, -2.0], np.float32)}
  grads = {'w': np.array([0.5, 0.25], np.float32)}
  frozen = optimizer.frozen_for_first_steps(optim, schedule, 3)
  state = frozen.init(params)
  for _ in range(3):
    updates, state = frozen.update(grads, state, params)
    np.testing.assert_array_equal(updates['w'], 0)
  updates, state = frozen.update(grads, state, params)
  expected = -schedule(3) * (grads['w'] + optim.weight_decay * params['w'])
  np.testing.assert_allclose(updates['w'], expected, rtol=1e-6)
  updates, _ = frozen.update(grads, state, params)
  momentum = grads['w'] + optim.weight_decay * params['w']
  np.testing.assert_allclose(updates['w'], -schedule(4) * (optim.momentum + 1) * momentum,
                             rtol=1e-6)


# What each method shares across the devices: SimCLR's negatives (the whole batch), MoCo v2's
# queue (split by rows), BYOL's target BatchNorm statistics, SwAV's Sinkhorn-Knopp sums.
@pytest.mark.parametrize('method', ['simclr', 'moco_v2', 'byol', 'swav'])
def test_sharded_steps_equal_single_device_steps(tiny_config, eight_device_runs, method):
  """The same initial state and global batches on one device: the same losses and states (to
  float rounding: the sums over the batch are split differently)."""
  config = method_config(tiny_config, method)
  initial, history = eight_device_runs(method)
  mesh = sharding.create_mesh(jax.devices()[:1])
  state = jax.device_put(initial, sharding.replicated(mesh))
  step = train.make_train_step(config, STEPS_PER_EPOCH, mesh, state)
  single = helpers.steps_from(config, state, step, mesh, 2)
  for (state, metrics), (single_state, single_metrics) in zip(history, single):
    np.testing.assert_allclose(metrics['loss'], single_metrics['loss'], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 (state.params, state.batch_stats, state.method_state),
                 (single_state.params, single_state.batch_stats, single_state.method_state))


# SimCLR keeps nothing beside its parameters and optimizer state, which SimSiam's resume
# tests cover.
@pytest.mark.parametrize('method', ['moco_v2', 'byol', 'swav'])
def test_a_run_resumed_from_a_checkpoint_ends_in_the_uninterrupted_state(
    tiny_config, tmp_path, eight_device_runs, method):
  """The loop restores everything the method keeps (targets, their BatchNorm statistics, the
  queue and its position, the prototypes' frozen optimizer) and continues bit for bit. That
  the loop checkpoints when preempted or killed is the method-independent part, tested in
  test_train_loop and test_em_variants."""
  config = method_config(tiny_config, method)
  del config.evals['knn']  # Not under test here; saves its compilation.
  _, history = eight_device_runs(method)
  stop_at = 3
  with checkpointing.Checkpointer(tmp_path, max_to_keep=1, save_every_steps=1) as ckpt:
    ckpt.save(stop_at, history[stop_at - 1][0], config, force=True)
  summary = train.train_and_evaluate(config, str(tmp_path))
  assert (summary['start_step'], summary['step']) == (stop_at, len(history))
  resumed, step = helpers.restore_final_state(config, tmp_path, STEPS_PER_EPOCH)
  assert step == len(history)
  final = history[-1][0]
  jax.tree.map(np.testing.assert_array_equal, resumed,
               {name: getattr(final, name) for name in resumed})


@pytest.mark.parametrize('field,value', [('moco_v2.queue_size', 128),
                                         ('swav.num_prototypes', 20),
                                         ('optim.optimizer', 'simclr_lars')])
def test_resuming_with_another_state_shape_is_refused_naming_the_field(tiny_config, tmp_path,
                                                                      field, value):
  """A queue, prototypes or optimizer state of another shape would fail to restore at every
  step and get the checkpoints set aside: refused before they are opened."""
  config = method_config(tiny_config, 'moco_v2' if field.startswith('moco') else 'swav')
  with checkpointing.Checkpointer(tmp_path, max_to_keep=1, save_every_steps=1) as ckpt:
    ckpt.save(1, {'w': np.zeros(2)}, config)
  section, name = field.split('.')
  old = config[section][name]
  config[section][name] = value
  with pytest.raises(checkpointing.CheckpointError,
                     match=rf'config\.{field}: {old} -> {value}$'):
    checkpointing.check_resumable(tmp_path, config)
