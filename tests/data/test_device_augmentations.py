"""The recipe after the crop on the device (config.data.augment_on='device'): the host ops'
output for the same parameters, the host recipe's draws, the same batch on any mesh and at
any resumption, and every method trained with it."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from matplotlib import cbook
from PIL import Image

import helpers
from configs import base
from simsiam_jax import config_validation, methods, sharding, train
from simsiam_jax.data import augmentations, device_augmentations, gaussian_kernel_size
from simsiam_jax.data import input_pipeline

DRAWS = 2000
SIZE = 224


@pytest.fixture(scope='module')
def real_crops():
  """Six uint8 224 px RandomResizedCrops of a photograph (matplotlib's sample of Grace
  Hopper, 512x600) cut by the host pipeline."""
  with cbook.get_sample_data('grace_hopper.jpg') as file:
    photo = np.asarray(Image.open(file).convert('RGB'))
  windows = augmentations.random_resized_crop_windows(photo.shape, tf.constant([0, 3]), 6,
                                                      (0.2, 1.0), (3 / 4, 4 / 3))
  return augmentations.to_uint8(augmentations.crop_and_resize(photo, windows, SIZE)).numpy()


@pytest.fixture
def aug():
  return base.get_augmentation_config()


def host_view(crop, params: device_augmentations.ViewParams, kernel_size: int):
  """The host's ops (augmentations.py) with the device's draws, in the recipe's order."""
  image = crop.astype(np.float32) / 255.0
  if params.jitter:
    for op in params.order:
      image = augmentations.JITTER_ADJUSTMENTS[op](image, params.factors[op])
  if params.grayscale:
    image = augmentations.grayscale(image)
  if params.blur:
    image = augmentations.gaussian_blur(image, params.sigma, kernel_size)
  image = augmentations.to_uint8(image).numpy()
  return image[:, ::-1] if params.flip else image


def levels_apart(a, b):
  return np.abs(np.asarray(a, np.int32) - np.asarray(b, np.int32)).max()


@pytest.mark.parametrize('op,values', [
    ('brightness', (0.6, 0.83, 1.0, 1.4)), ('contrast', (0.6, 0.91, 1.4)),
    ('saturation', (0.6, 1.17, 1.4)), ('hue', (-0.1, -0.03, 0.0, 0.061, 0.1))])
def test_each_jitter_op_gives_the_host_ops_output_to_one_level(real_crops, op, values):
  index = ('brightness', 'contrast', 'saturation', 'hue').index(op)
  # The op as color_jitter applies it: the hue's turn, or the blend of the other three.
  device_op = jax.jit(device_augmentations.adjust_hue if index == device_augmentations.HUE
                      else functools.partial(device_augmentations.blend_adjustment, op=index))
  for crop, value in itertools.product(real_crops, values):
    image = crop.astype(np.float32) / 255.0
    host = augmentations.to_uint8(augmentations.JITTER_ADJUSTMENTS[index](image, value))
    device = device_augmentations.to_uint8(device_op(image, value))
    assert levels_apart(host, device) <= 1, (op, value)


@pytest.mark.parametrize('blur_by', ['shifted_sums', 'convolutions'])
def test_grayscale_and_blur_give_the_host_ops_output_to_one_level(real_crops, blur_by,
                                                                  monkeypatch):
  """The blur both ways: here on the CPU as the TPU computes it, too."""
  monkeypatch.setattr(device_augmentations, 'blur_by_shifted_sums',
                      getattr(device_augmentations, f'blur_by_{blur_by}'))
  kernel_size = gaussian_kernel_size(SIZE, 0.1)
  blur = jax.jit(device_augmentations.gaussian_blur, static_argnums=2)
  for crop in real_crops:
    image = crop.astype(np.float32) / 255.0
    assert levels_apart(augmentations.to_uint8(augmentations.grayscale(image)),
                        device_augmentations.to_uint8(device_augmentations.grayscale(image))) <= 1
    for sigma in (0.1, 0.7, 2.0):
      host = augmentations.to_uint8(augmentations.gaussian_blur(image, sigma, kernel_size))
      device = device_augmentations.to_uint8(blur(image, sigma, kernel_size))
      assert levels_apart(host, device) <= 1, sigma
      # Not trivially: the blur moves the image by many levels.
      assert sigma < 0.5 or levels_apart(device, crop) > 20


def test_the_tpu_blurs_by_convolutions_and_the_other_platforms_by_shifted_sums():
  blur = jax.jit(device_augmentations.gaussian_blur, static_argnums=2)
  image = jax.ShapeDtypeStruct((SIZE, SIZE, 3), jnp.float32)
  for platform, convolutions in (('tpu', 2), ('cpu', 0), ('cuda', 0)):
    text = blur.trace(image, 1.0, 23).lower(lowering_platforms=(platform,)).as_text()
    assert text.count('stablehlo.convolution') == convolutions, platform


def test_a_whole_view_is_the_host_recipe_with_the_same_draws(real_crops, aug):
  """32 views of each of 2 crops, each op drawn with probability 1/2 so that the views show
  most of the 16 combinations of ops: the host ops in order with the same factors, order,
  sigma and flip give them to one level."""
  for field in ('color_jitter_prob', 'grayscale_prob', 'blur_prob', 'flip_prob'):
    aug[field] = 0.5
  kernel_size = gaussian_kernel_size(SIZE, aug.blur_kernel_fraction)
  keys = jax.random.split(jax.random.key(1), 32)
  draw = jax.jit(jax.vmap(lambda key: device_augmentations.draw_view_params(key, aug)))
  augment = jax.jit(jax.vmap(lambda crop, p: device_augmentations.augment_view(
      crop, p, kernel_size), in_axes=(None, 0)))
  params = draw(keys)
  combinations = set()
  for crop in real_crops[:2]:
    views = np.asarray(augment(crop, params))
    for i, view in enumerate(views):
      drawn = jax.tree.map(lambda x: np.asarray(x)[i], params)
      combinations.add((bool(drawn.jitter), bool(drawn.grayscale), bool(drawn.blur),
                        bool(drawn.flip)))
      assert levels_apart(view, host_view(crop, drawn, kernel_size)) <= 1, drawn
  assert len(combinations) >= 12


def device_views(image, aug, num=DRAWS):
  """The device's views of one crop (uint8 of `image`) for `num` keys."""
  kernel_size = gaussian_kernel_size(image.shape[0], aug.blur_kernel_fraction)
  crop = device_augmentations.to_uint8(jnp.asarray(image))
  augment = lambda key: device_augmentations.augment_view(
      crop, device_augmentations.draw_view_params(key, aug), kernel_size)
  return np.asarray(jax.jit(jax.vmap(augment))(jax.random.split(jax.random.key(0), num)))


def test_each_op_of_a_view_is_applied_with_its_own_probability(aug):
  """As the host path's test of the same name (tests/data/test_augmentations.py): over 2000
  keys, a view differs from the same key's view without op X in the fraction of the draws
  that X's probability says, and a fifth of the views are gray."""
  from test_augmentations import APPLY_PROBABILITIES, PAPER_RECIPE, colorful_image
  aug.blur_sigma = (1.0, 2.0)
  image = colorful_image()
  full = device_views(image, aug)
  for field in APPLY_PROBABILITIES:
    without = aug.copy_and_resolve_references()
    without[field] = 0.0
    fraction = np.mean(np.any(device_views(image, without) != full, axis=(1, 2, 3)))
    assert abs(fraction - PAPER_RECIPE[field]) < 0.04, (field, fraction)
  gray = np.all(full[..., :1] == full, axis=(1, 2, 3))
  assert abs(gray.mean() - PAPER_RECIPE['grayscale_prob']) < 0.04


def test_draws_span_the_recipes_ranges_and_every_jitter_order(aug):
  """ColorJitter(0.4, 0.4, 0.4, 0.1)'s factors uniform over [0.6, 1.4] and [-0.1, 0.1], the
  24 orders equally often, the blur's sigma uniform over (0.1, 2.0), and each op's share of
  the draws its probability."""
  params = jax.jit(jax.vmap(lambda k: device_augmentations.draw_view_params(k, aug)))(
      jax.random.split(jax.random.key(2), 2400))
  ranges = [(0.6, 1.4)] * 3 + [(-0.1, 0.1)]
  for column, (low, high) in enumerate(ranges):
    values = np.asarray(params.factors[:, column])
    width = high - low
    assert low - 1e-6 <= values.min() < low + 0.01 * width, column
    assert high - 0.01 * width < values.max() <= high + 1e-6, column
    assert abs(values.mean() - (low + high) / 2) < 0.03 * width, column
  sigma = np.asarray(params.sigma)
  assert 0.1 <= sigma.min() < 0.12 and 1.98 < sigma.max() <= 2.0
  assert abs(sigma.mean() - 1.05) < 0.03
  orders = {}
  for order in map(tuple, np.asarray(params.order)):
    orders[order] = orders.get(order, 0) + 1
  assert len(orders) == 24 and all(50 < c < 150 for c in orders.values())
  for field, prob in (('jitter', 0.8), ('grayscale', 0.2), ('blur', 0.5), ('flip', 0.5)):
    assert abs(np.mean(getattr(params, field)) - prob) < 0.03, field


def crops_batch(config, rows):
  rng = np.random.default_rng(0)
  size = config.data.image_size
  crops = rng.integers(0, 256, (rows // 2, size, size, 3), np.uint8)
  # Rows r and r + rows/2 hold the same crop: they must still be augmented differently.
  crops = np.concatenate([crops, crops])
  return {'view1': crops, 'view2': crops, 'index': np.arange(rows, dtype=np.int32)}


def test_a_batch_is_augmented_alike_on_any_mesh_and_by_step_row_and_view(tiny_config):
  """The draws of (seed, step, view, row): one device and eight give the same views; the
  same crop in two rows, or as both views, or at another step, is augmented differently."""
  tiny_config.aug.blur_prob = 0.5
  batch = crops_batch(tiny_config, 16)
  augment = lambda batch, step: device_augmentations.augment_batch(
      batch, step, tiny_config.seed, tiny_config.aug, tiny_config.data.image_size)
  single = jax.jit(augment)(batch, 5)
  mesh = sharding.create_mesh()
  sharded = jax.jit(augment, in_shardings=(sharding.batch_sharding(mesh), None))(
      jax.device_put(batch, sharding.batch_sharding(mesh)), 5)
  assert len(sharded['view1'].sharding.device_set) == 8
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(sharded), jax.device_get(single))
  view1, view2 = np.asarray(single['view1']), np.asarray(single['view2'])
  assert view1.dtype == np.uint8
  assert all(not np.array_equal(view1[r], view1[r + 8]) for r in range(8))
  assert all(not np.array_equal(view1[r], view2[r]) for r in range(16))
  later = np.asarray(jax.jit(augment)(batch, 6)['view1'])
  assert sum(np.array_equal(later[r], view1[r]) for r in range(16)) <= 1
  np.testing.assert_array_equal(single['index'], batch['index'])


def test_device_mode_ships_the_host_modes_crops(tiny_config):
  """The host's share in device mode is the crops host mode augments: with every op's
  probability 0, host mode gives the same views."""
  device_mode = tiny_config.copy_and_resolve_references()
  device_mode.data.augment_on = 'device'
  for field in ('color_jitter_prob', 'grayscale_prob', 'blur_prob', 'flip_prob'):
    tiny_config.aug[field] = 0.0
  host, device = (next(input_pipeline.create_pretrain_iterator(c, process_index=0,
                                                               process_count=1))
                  for c in (tiny_config, device_mode))
  for name in ('view1', 'view2', 'index'):
    np.testing.assert_array_equal(host[name], device[name])
  assert not np.array_equal(device['view1'], device['view2'])


@pytest.mark.parametrize('platform,mode', [('gpu', 'device'), ('tpu', 'host'), ('cpu', 'host')])
def test_auto_augments_on_the_device_on_gpus_only(tiny_config, monkeypatch, platform, mode):
  """data.augment_on='auto' (the accelerator configs'): the pipeline and the step of a
  process on `platform` do what `mode` does."""
  monkeypatch.setattr(jax, 'default_backend', lambda: platform)
  explicit = tiny_config.copy_and_resolve_references()
  explicit.data.augment_on = mode
  tiny_config.data.augment_on = 'auto'
  auto, expected = (next(input_pipeline.create_pretrain_iterator(c, process_index=0,
                                                                 process_count=1))
                    for c in (tiny_config, explicit))
  for name in ('view1', 'view2'):
    np.testing.assert_array_equal(auto[name], expected[name])
  augmented = []
  monkeypatch.setattr(device_augmentations, 'augment_batch',
                      lambda batch, *args: augmented.append(True) or batch)
  method = methods.get(tiny_config.method)
  mesh = sharding.create_mesh()
  state = jax.eval_shape(lambda: method.create_train_state(
      jax.random.key(0), tiny_config, method.create_optimizer(tiny_config, 4), mesh, 64))
  jax.eval_shape(train.train_step_fn(tiny_config, 4), state, train.batch_shapes(tiny_config))
  assert augmented == ([True] if mode == 'device' else [])


EM_VARIANTS = {'k_step': {'target': 'k_step', 'target_refresh_steps': 2},
               'memory_bank': {'target': 'memory_bank'}}


def variant_config(config, variant):
  """The tiny config in device mode running a method or an EM variant of SimSiam."""
  config.method = variant if variant in methods.METHODS else 'simsiam'
  config.simsiam.update(EM_VARIANTS.get(variant, {}))
  config.moco_v2.queue_size = 64
  config.swav.num_prototypes = 10
  config.data.augment_on = 'device'
  config_validation.validate_config(config, device_count=8)
  methods.get(config.method).validate(config)
  return config


def host_mode(config):
  config = config.copy_and_resolve_references()
  config.data.augment_on = 'host'
  return config


# SimSiam, and the memory bank, whose step also reads the batch's indices.
@pytest.mark.parametrize('variant', ['simsiam', 'memory_bank'])
def test_the_device_mode_step_is_the_method_step_on_device_augmented_crops(tiny_config,
                                                                          variant):
  """Two steps from the pipeline's crops: the same losses and parameters as the host
  mode's step given augment_batch of the crops with each step's number."""
  config = variant_config(tiny_config, variant)
  mesh = sharding.create_mesh()
  state, step = helpers.state_and_step(config, mesh, steps_per_epoch=4)
  method_step = jax.jit(train.train_step_fn(host_mode(config), 4))
  for step_index, batch in enumerate(itertools.islice(helpers.pretrain_batches(config, mesh), 2)):
    augmented = device_augmentations.augment_batch(batch, step_index, config.seed, config.aug,
                                                   config.data.image_size)
    expected_state, expected = method_step(state, augmented)
    state, metrics = step(state, batch)
    assert np.isfinite(metrics['loss'])
    np.testing.assert_allclose(metrics['loss'], expected['loss'], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(state.params), jax.device_get(expected_state.params))


@pytest.mark.parametrize('variant', ['simclr', 'moco_v2', 'byol', 'swav', 'k_step'])
def test_every_other_method_traces_in_device_mode_to_its_host_mode_step(tiny_config, variant):
  """Traced, not compiled (the two tests above and the resume test of test_train_loop.py
  run device mode's step): the device mode's step of each method takes the pipeline's
  batch and gives the state and metrics its host mode's step gives."""
  config = variant_config(tiny_config, variant)
  mesh = sharding.create_mesh()
  method = methods.get(config.method)
  state = jax.eval_shape(lambda: method.create_train_state(
      jax.random.key(0), config, method.create_optimizer(config, 4), mesh, 64))
  batch = train.batch_shapes(config)
  device, host = (jax.eval_shape(train.train_step_fn(c, 4), state, batch)
                  for c in (config, host_mode(config)))
  assert jax.tree.structure(device) == jax.tree.structure(host)
  jax.tree.map(lambda a, b: (a.shape, a.dtype) == (b.shape, b.dtype) or pytest.fail(
      f'{a} != {b}'), device, host)
  assert {'loss', 'z_std'} <= set(device[1])
