import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import base
from helpers import make_tiny_config
from simsiam_jax.models import create_model, heads, resnet


def _param_counts(module, *inputs, **kwargs):
  """{top-level submodule: number of parameters}, from shapes only."""
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs, **kwargs))
  return {name: sum(x.size for x in jax.tree.leaves(tree))
          for name, tree in variables['params'].items()}


def _param_count(module, *inputs, **kwargs):
  return sum(_param_counts(module, *inputs, **kwargs).values())


@pytest.mark.parametrize('name,expected', [
    # torchvision resnet18: 11,689,512 parameters, of which fc has 513,000.
    ('resnet18', 11_176_512),
    # torchvision resnet50: 25,557,032 parameters, of which fc has 2,049,000.
    ('resnet50', 23_508_032),
])
def test_parameter_count_matches_torchvision_without_fc(name, expected):
  images = jnp.zeros((1, 224, 224, 3))
  assert _param_count(resnet.create_backbone(name), images, train=False) == expected


def _head_param_counts(model_config):
  """{'backbone', 'projector', 'predictor': number of parameters} of create_model's network."""
  images = jnp.zeros((2, 32, 32, 3))
  return _param_counts(create_model(model_config), images, images, train=False)


def test_parameter_counts_of_the_official_resnet50_simsiam():
  """main_simsiam.py's builder (dim 2048, pred_dim 512):
  projector: three 2048x2048 Linear without bias (3 * 4,194,304), BN(2048) with affine on
  the first two (2 * 4,096), affine-free output BN: 12,591,104;
  predictor: 2048x512 without bias (1,048,576), BN(512) (1,024), 512x2048 with bias
  (1,050,624): 2,100,224;
  backbone: torchvision's resnet50 without fc, 25,557,032 - 2,049,000 = 23,508,032."""
  model_config = base.get_model_config()
  assert _head_param_counts(model_config) == {
      'backbone': 23_508_032, 'projector': 12_591_104, 'predictor': 2_100_224}


def test_parameter_counts_follow_each_head_dimension():
  """Every dimension different, so a head built from the wrong field changes a count."""
  model_config = make_tiny_config().model
  model_config.update(width=4, projector_layers=3, projector_hidden_dim=24, projector_dim=20,
                      predictor_hidden_dim=12)
  feature_dim = resnet.create_backbone(model_config.name, width=4).feature_dim
  counts = _head_param_counts(model_config)
  hidden, out, predictor_hidden = 24, 20, 12
  assert feature_dim not in (hidden, out, predictor_hidden)
  assert counts['projector'] == feature_dim * hidden + 2 * hidden + hidden * hidden + (
      2 * hidden) + hidden * out
  assert counts['predictor'] == out * predictor_hidden + 2 * predictor_hidden + (
      predictor_hidden * out + out)


def test_last_batchnorm_of_every_residual_branch_starts_at_zero():
  model = resnet.create_backbone('resnet50', width=4)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
  flat = traverse_util.flatten_dict(variables['params'], sep='/')
  blocks = sorted({k.split('/')[0] for k in flat if k.startswith('Bottleneck_')})
  assert len(blocks) == 16
  for block in blocks:
    last_norm_scale = flat[f'{block}/BatchNorm_2/scale']
    assert np.all(last_norm_scale == 0), block
    assert np.all(flat[f'{block}/BatchNorm_0/scale'] == 1), block


def test_bottleneck_strides_on_the_3x3_conv():
  """torchvision v1.5: the first block of stages 2-4 downsamples in its 3x3, not its 1x1."""
  model = resnet.create_backbone('resnet50', width=4)
  images = jnp.zeros((1, 64, 64, 3))
  variables = model.init(jax.random.key(0), images, train=False)
  _, state = model.apply(variables, images, train=False, capture_intermediates=True,
                         mutable=['intermediates'])
  stage2_first = state['intermediates']['Bottleneck_3']
  h_1x1 = stage2_first['Conv_0']['__call__'][0].shape[1]
  h_3x3 = stage2_first['Conv_1']['__call__'][0].shape[1]
  assert (h_1x1, h_3x3) == (16, 8)


@pytest.mark.parametrize('cifar_stem,expected_stem_kernel,expected_final_side', [
    (False, (7, 7, 3, 4), 1),
    (True, (3, 3, 3, 4), 4),
])
def test_cifar_stem_keeps_resolution(cifar_stem, expected_stem_kernel, expected_final_side):
  model = resnet.create_backbone('resnet18', width=4, cifar_stem=cifar_stem)
  images = jnp.zeros((2, 32, 32, 3))
  variables = model.init(jax.random.key(0), images, train=False)
  assert variables['params']['stem_conv']['kernel'].shape == expected_stem_kernel
  _, state = model.apply(variables, images, train=False, capture_intermediates=True,
                         mutable=['intermediates'])
  last_block = state['intermediates']['BasicBlock_7']['__call__'][0]
  assert last_block.shape[1] == expected_final_side
  assert model.apply(variables, images, train=False).shape == (2, model.feature_dim)


def test_unknown_backbone_is_a_clear_error():
  with pytest.raises(ValueError, match='resnet50'):
    resnet.create_backbone('resnet51')


def test_projector_layout():
  projector = heads.Projector(num_layers=3, hidden_dim=16, output_dim=8)
  variables = projector.init(jax.random.key(0), jnp.ones((4, 12)), train=False)
  params = variables['params']
  assert sorted(params) == ['BatchNorm_0', 'BatchNorm_1', 'Dense_0', 'Dense_1', 'Dense_2']
  for dense in ('Dense_0', 'Dense_1', 'Dense_2'):
    assert list(params[dense]) == ['kernel']  # No bias before BatchNorm.
  # The output BatchNorm has statistics but no affine parameters.
  assert 'BatchNorm_2' in variables['batch_stats']
  assert params['Dense_2']['kernel'].shape == (16, 8)


def test_projector_output_is_batch_normalized_without_affine():
  projector = heads.Projector(num_layers=2, hidden_dim=16, output_dim=8)
  x = jax.random.normal(jax.random.key(1), (64, 12)) * 5 + 3
  variables = projector.init(jax.random.key(0), x, train=False)
  # Every parameter away from its init (an affine BN starts as the identity too): whatever
  # the weights, the output is standardised per channel.
  leaves, treedef = jax.tree.flatten(variables['params'])
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = treedef.unflatten([l + jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])
  z, _ = projector.apply({**variables, 'params': params}, x, train=True,
                         mutable=['batch_stats'])
  np.testing.assert_allclose(np.mean(z, axis=0), 0, atol=1e-5)
  np.testing.assert_allclose(np.std(z, axis=0), 1, atol=1e-2)


def test_predictor_layout():
  predictor = heads.Predictor(hidden_dim=4, output_dim=16)
  variables = predictor.init(jax.random.key(0), jnp.ones((3, 16)), train=False)
  params = variables['params']
  assert list(params['Dense_0']) == ['kernel']
  assert sorted(params['Dense_1']) == ['bias', 'kernel']
  assert params['Dense_0']['kernel'].shape == (16, 4)
  assert params['Dense_1']['kernel'].shape == (4, 16)
  assert list(variables['batch_stats']) == ['BatchNorm_0']  # BN on the hidden layer only.


def test_each_view_is_normalized_with_its_own_batch_statistics(tiny_config):
  model = create_model(tiny_config.model)
  x1 = jax.random.uniform(jax.random.key(1), (8, 16, 16, 3))
  x2 = 3.0 * jax.random.uniform(jax.random.key(2), (8, 16, 16, 3)) - 1.0
  variables = model.init(jax.random.key(0), x1, x2, train=False)
  outputs, _ = model.apply(variables, x1, x2, train=True, mutable=['batch_stats'])
  z1_alone, _ = model.apply(variables, x1, train=True, mutable=['batch_stats'],
                            method=model.encode)
  z1_in_joint_batch, _ = model.apply(variables, jnp.concatenate([x1, x2]), train=True,
                                     mutable=['batch_stats'], method=model.encode)
  np.testing.assert_allclose(outputs['z1'], z1_alone, rtol=1e-5, atol=1e-5)
  assert not np.allclose(outputs['z1'], z1_in_joint_batch[:8], atol=1e-3)
  assert outputs['p1'].shape == outputs['z1'].shape == (8, tiny_config.model.projector_dim)


def test_head_linear_layers_start_from_torch_linear_default_init():
  """torch.nn.Linear: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as the official
  builder's layers start (flax's default would be lecun_normal and a zero bias)."""
  fan_in, hidden, out = 256, 512, 1024
  predictor = heads.Predictor(hidden_dim=hidden, output_dim=out)
  params = predictor.init(jax.random.key(0), jnp.ones((2, fan_in)), train=False)['params']
  for name, fan in (('Dense_0', fan_in), ('Dense_1', hidden)):
    for leaf in params[name].values():
      bound = 1 / np.sqrt(fan)
      assert np.abs(leaf).max() <= bound
      assert np.abs(leaf).max() > 0.98 * bound  # Uniform over the whole interval.
      np.testing.assert_allclose(np.std(leaf), bound / np.sqrt(3), rtol=0.05)
  assert sorted(params['Dense_1']) == ['bias', 'kernel']  # The output bias is not zero.


def test_remat_recomputes_the_same_network():
  """model.remat changes what the backward pass keeps, not the parameters (names included,
  so checkpoints and torchvision's names hold), the outputs or the gradients."""
  images = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
  for name in ('resnet18', 'resnet50'):
    shapes = [jax.eval_shape(lambda m=module: m.init(jax.random.key(0), images, train=False))
              for module in (resnet.create_backbone(name, width=4, remat=remat)
                             for remat in ('none', 'nothing_saveable'))]
    assert jax.tree.structure(shapes[0]) == jax.tree.structure(shapes[1]), name
  plain = resnet.create_backbone('resnet18', width=4, cifar_stem=True)
  remat = resnet.create_backbone('resnet18', width=4, cifar_stem=True, remat='nothing_saveable')
  variables = plain.init(jax.random.key(0), images, train=False)

  def loss_and_grads(module):
    def loss(params):
      out, _ = module.apply({**variables, 'params': params}, images, train=True,
                            mutable=['batch_stats'])
      return jnp.sum(out**2)
    return jax.value_and_grad(loss)

  (plain_loss, plain_grads), (remat_loss, remat_grads) = (
      jax.jit(loss_and_grads(module))(variables['params']) for module in (plain, remat))
  np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               remat_grads, plain_grads)
  # The recomputation is there: the remat program runs more convolutions.
  count_convs = lambda module: str(jax.make_jaxpr(loss_and_grads(module))(
      variables['params'])).count('conv_general_dilated')
  assert count_convs(remat) > count_convs(plain)
