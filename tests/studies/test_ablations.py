"""Each ablation switch of the paper changes the computation it claims to, and no more."""

import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import helpers
from simsiam_jax import losses, sharding
from simsiam_jax.data import input_pipeline
from simsiam_jax.studies import ablations
from simsiam_jax.methods import simsiam
from simsiam_jax.models import create_model

STEPS_PER_EPOCH = 4


def _setup(config):
  mesh = sharding.create_mesh()
  state, step_fn = helpers.state_and_step(config, mesh, STEPS_PER_EPOCH)
  batches = input_pipeline.prefetch_to_mesh(input_pipeline.create_pretrain_iterator(config),
                                            mesh)
  return state, step_fn, batches


def _train(config, num_steps):
  state, step_fn, batches = _setup(config)
  history = []
  for batch in itertools.islice(batches, num_steps):
    state, metrics = step_fn(state, batch)
    history.append(jax.device_get(metrics))
  return state, history


def test_without_stop_gradient_the_representation_collapses(tiny_config):
  """Paper Fig. 2: without stop-gradient the loss nears -1 within a few dozen steps and
  z-std falls, unlike the default's. The output BN of the projector keeps each channel's
  batch variance at 1, so z-std cannot reach 0 here; it halves (see RESULTS.md)."""
  tiny_config.optim.base_lr = 8.0
  tiny_config.num_epochs = 10
  _, default = _train(tiny_config, 40)
  tiny_config.stop_gradient = False
  _, collapsed = _train(tiny_config, 40)
  target = 1 / np.sqrt(tiny_config.model.projector_dim)

  def last_steps(history, name):  # Both runs oscillate from step to step.
    return np.mean([m[name] for m in history[-10:]])

  assert last_steps(collapsed, 'loss') < -0.75
  assert last_steps(collapsed, 'loss') < last_steps(default, 'loss') - 0.2
  assert last_steps(collapsed, 'z_std') < 0.7 * target
  assert last_steps(default, 'z_std') > 0.8 * target


def test_no_predictor_makes_p_equal_z(tiny_config):
  tiny_config.model.predictor = 'none'
  model = create_model(tiny_config.model)
  x1, x2 = (jax.random.uniform(jax.random.key(i), (8, 16, 16, 3)) for i in (1, 2))
  variables = model.init(jax.random.key(0), x1, x2, train=False)
  assert 'predictor' not in variables['params']
  outputs, _ = model.apply(variables, x1, x2, train=True, mutable=['batch_stats'])
  np.testing.assert_array_equal(outputs['p1'], outputs['z1'])
  np.testing.assert_array_equal(outputs['p2'], outputs['z2'])


def test_fixed_random_predictor_is_never_updated(tiny_config):
  tiny_config.model.predictor = 'fixed_random'
  state, step_fn, batches = _setup(tiny_config)
  predictor_before = jax.device_get(state.params['predictor'])
  projector_before = jax.device_get(state.params['projector'])
  for batch in itertools.islice(batches, 3):
    state, _ = step_fn(state, batch)
  jax.tree.map(np.testing.assert_array_equal, predictor_before,
               jax.device_get(state.params['predictor']))
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), projector_before,
                         jax.device_get(state.params['projector']))
  assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize('setting,projector_norms,predictor_norms', [
    ('none', 0, 0), ('hidden', 1, 1), ('default', 2, 1), ('all', 2, 2)])
def test_head_batch_norm_placement(tiny_config, setting, projector_norms, predictor_norms):
  """Paper Table 3; a linear layer has a bias exactly when no BN follows it."""
  tiny_config.model.head_batch_norm = setting
  model = create_model(tiny_config.model)
  x = jnp.zeros((4, 16, 16, 3))
  variables = model.init(jax.random.key(0), x, x, train=False)
  for head, expected in (('projector', projector_norms), ('predictor', predictor_norms)):
    stats = variables['batch_stats'].get(head, {})
    assert len(stats) == expected, (head, stats.keys())
    params = variables['params'][head]
    dense_with_bias = sum('bias' in params[name] for name in params if name.startswith('Dense'))
    num_dense = sum(name.startswith('Dense') for name in params)
    assert dense_with_bias == num_dense - expected


def test_cross_entropy_similarity_matches_numpy():
  rng = np.random.default_rng(0)
  p, z = rng.normal(size=(2, 6, 10)).astype(np.float32)
  softmax_z = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
  log_softmax_p = p - np.log(np.exp(p).sum(axis=1, keepdims=True))
  expected = -np.mean(np.sum(softmax_z * log_softmax_p, axis=1))
  np.testing.assert_allclose(losses.cross_entropy_similarity(p, z), expected, rtol=1e-5)
  np.testing.assert_allclose(
      losses.asymmetric_loss(jnp.asarray(p), jnp.asarray(z), similarity='cross_entropy'),
      expected, rtol=1e-5)


def test_asymmetric_loss_predicts_from_the_first_view_only():
  rng = np.random.default_rng(0)
  p1, p2, z1, z2 = (jnp.asarray(rng.normal(size=(4, 8))) for _ in range(4))
  pair = {'p1': p1, 'p2': p2, 'z1': z1, 'z2': z2}
  grads = jax.grad(lambda o: losses.simsiam_loss([o], symmetric=False))(pair)
  assert np.abs(grads['p1']).max() > 0
  assert all(np.all(grads[k] == 0) for k in ('p2', 'z1', 'z2'))
  np.testing.assert_allclose(losses.simsiam_loss([pair], symmetric=False),
                             losses.negative_cosine(p1, z2))
  other = {k: -v for k, v in pair.items()}
  np.testing.assert_allclose(
      losses.simsiam_loss([pair, other], symmetric=False),
      0.5 * (losses.negative_cosine(p1, z2) + losses.negative_cosine(-p1, -z2)))


def test_asymmetric_2x_trains_on_two_pairs_of_views_per_image(tiny_config):
  tiny_config.loss_symmetry = 'asymmetric_2x'
  batch = next(input_pipeline.create_pretrain_iterator(tiny_config))
  assert sorted(batch) == ['index', 'view1', 'view2', 'view3', 'view4']
  assert not np.array_equal(batch['view1'], batch['view3'])
  state, step_fn, _ = _setup(tiny_config)
  # The step's loss is the mean of D(p1, z2) over both pairs, each pair through the network
  # on its own (BatchNorm statistics per view).
  pair_losses = []
  for pair in simsiam.normalized_view_pairs(batch, tiny_config):
    (outputs,), _ = simsiam.forward(state.params, state.batch_stats, state.apply_fn, [pair])
    pair_losses.append(losses.negative_cosine(outputs['p1'], outputs['z2']))
  mesh = sharding.create_mesh()
  _, metrics = step_fn(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
  np.testing.assert_allclose(metrics['loss'], np.mean(pair_losses), rtol=1e-5)
  assert abs(pair_losses[0] - pair_losses[1]) > 1e-3  # Each pair counts.


def test_ablation_runner_reports_every_variant_of_the_workdir(tiny_config, tmp_path):
  """Variants run a few at a time land in one table, in the order of the study."""
  tiny_config.num_epochs = 1
  tiny_config.evals.knn.every_epochs = 1
  tiny_config.evals.knn.k = 5
  ablations.run_variants(tiny_config, str(tmp_path), ['half_batch'])
  ablations.run_variants(tiny_config, str(tmp_path), ['default'])
  results = ablations.collect_results(tiny_config, str(tmp_path))
  table = ablations.markdown_table(results)
  rows = [line for line in table.splitlines() if line.startswith('| ') and 'variant' not in line]
  assert [row.split(' | ')[0][2:] for row in rows] == ['default', 'half_batch']
  assert sorted(results['default']['curves']['knn_top1']) == [0.0, 1.0]  # Random init, end.
  assert len(results['half_batch']['curves']['loss']) == 2 * len(
      results['default']['curves']['loss'])  # Twice the steps per epoch.
  assert all(0 < r['minutes'] < 30 and r['note'] == '' for r in results.values())
  # XLA's analysis of the compiled step: the half batch's activations take less.
  assert 0 < results['half_batch']['memory_mib'] < results['default']['memory_mib']
  assert f"| {results['default']['memory_mib']:.0f} |" in table
  figure = ablations.plot_study(results, str(tmp_path))
  assert figure == str(tmp_path / 'stop_gradient.png')
  assert (tmp_path / 'stop_gradient.png').stat().st_size > 10_000

  tiny_config.num_epochs = 2  # As if the runs had stopped half-way.
  assert ablations.collect_results(tiny_config, str(tmp_path))['default']['note'] == (
      'stopped at epoch 1.00 of 2')


def test_unknown_ablation_variant_is_a_clear_error(tiny_config, tmp_path):
  with pytest.raises(ValueError, match='--variants: unknown no_such_variant'):
    ablations.run_variants(tiny_config, str(tmp_path), ['default', 'no_such_variant'])


def _curves(knn_top1):
  return {'loss': {1.0: -0.5}, 'z_std': {1.0: 0.1}, 'z_std_target': {1.0: 0.125},
          'knn_top1': {0.0: 20.0, 1.0: knn_top1}}


def test_em_study_table_lists_the_paper_values_and_the_seed_spread():
  results = {name: {'curves': _curves(top1), 'minutes': 1.0, 'note': ''} for name, top1 in
             (('simsiam', 40.0), ('seed_1', 42.0), ('seed_2', 47.0), ('k_10', 39.0))}
  table = ablations.markdown_table(results, 'em')
  assert '| k_10 | 10-step: 68.7 | -0.500 | 0.1000 (0.1250) | 39.0 | 1.0 |  |  |' in table
  assert ('kNN top-1 of simsiam over seeds base, 1, 2: mean 43.00, std 3.61, range '
          '40.00-47.00.') in table
  del results['seed_1'], results['seed_2']
  assert 'seeds' not in ablations.markdown_table(results, 'em')


def test_em_variants_configure_the_targets_of_the_paper(tiny_config):
  k_1_epoch = ablations.variant_config(tiny_config, 'k_1_epoch', 'em')
  assert k_1_epoch.simsiam.target == 'k_step'
  assert simsiam.target_refresh_steps(k_1_epoch, steps_per_epoch=195) == 195
  k_10 = ablations.variant_config(tiny_config, 'k_10', 'em')
  assert simsiam.target_refresh_steps(k_10, steps_per_epoch=195) == 10
  bank = ablations.variant_config(tiny_config, 'memory_bank', 'em')
  assert (bank.simsiam.target, bank.simsiam.bank_momentum, bank.model.predictor) == (
      'memory_bank', 0.8, 'none')
  assert ablations.variant_config(tiny_config, 'seed_2', 'em').seed == 2


def test_table4_study_runs_each_method_on_the_same_base_config(tiny_config):
  for name in ('simclr', 'moco_v2', 'byol', 'swav'):
    config = ablations.variant_config(tiny_config, name, 'table4')
    assert config.method == name
    assert config.to_dict() == {**tiny_config.to_dict(), 'method': name}
  assert ablations.variant_config(tiny_config, 'simsiam', 'table4') == tiny_config
  assert ablations.variant_config(tiny_config, 'seed_1', 'table4').seed == 1
  half = ablations.variant_config(tiny_config, 'byol_half_batch', 'table4')
  assert (half.method, half.batch_size) == ('byol', tiny_config.batch_size // 2)


def test_a_preempted_variant_stops_the_study(tiny_config, tmp_path, monkeypatch):
  trained = []

  def preempted_after_one_step(config, workdir):
    trained.append(os.path.basename(workdir))
    return {'step': 1, 'total_steps': 8}

  monkeypatch.setattr(ablations.train, 'train_and_evaluate', preempted_after_one_step)
  ablations.run_variants(tiny_config, str(tmp_path), ['simsiam', 'simclr', 'byol'], 'table4')
  assert trained == ['simsiam']
