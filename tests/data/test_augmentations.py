"""Statistics and invariants of the MoCo v2 augmentation ops."""

import numpy as np
import pytest
import tensorflow as tf

from configs import base
from simsiam_jax import data
from simsiam_jax.data import augmentations

DRAWS = 2000


def colorful_image(size=32, seed=0, detail=4):
  """Smooth random colors: every channel differs and the image is not symmetric."""
  rng = np.random.default_rng(seed)
  low = rng.uniform(0, 1, (detail, detail, 3)).astype(np.float32)
  return tf.image.resize(low, [size, size]).numpy()


def over_seeds(fn, num=DRAWS):
  """fn(seed) for seeds (0, 0) .. (0, num - 1), batched in one tf.data pass."""
  ds = tf.data.Dataset.range(num).map(lambda i: fn(tf.stack([tf.constant(0, tf.int64), i])))
  return next(iter(ds.batch(num).as_numpy_iterator()))


def test_crop_windows_follow_scale_and_ratio():
  height, width = 200, 300
  windows = augmentations.random_resized_crop_windows(
      [height, width], tf.constant([0, 1]), DRAWS, (0.2, 1.0), (3 / 4, 4 / 3)).numpy()
  y, x, h, w = windows.T
  assert (y >= 0).all() and (x >= 0).all()
  assert (y + h <= height).all() and (x + w <= width).all()
  area = h * w / (height * width)
  # Rounding h and w to pixels moves the area by at most about (h + w) pixels.
  slack = (h + w + 1) / (height * width)
  assert (area >= 0.2 - slack).all() and (area <= 1.0).all()
  assert area.min() < 0.25 and area.max() > 0.8  # The whole range is sampled.
  ratio = w / h
  assert (ratio >= 3 / 4 - 2 / h).all() and (ratio <= 4 / 3 + 2 / h).all()
  # Offsets are spread over the image, not pinned to a corner or the center.
  assert len(np.unique(y)) > 50 and len(np.unique(x)) > 50


def test_crop_falls_back_to_central_crop_on_extreme_shapes():
  # A 1000x10 strip: no crop of ratio in [3/4, 4/3] and area >= 0.2 fits.
  windows = augmentations.random_resized_crop_windows(
      [1000, 10], tf.constant([0, 1]), 16, (0.2, 1.0), (3 / 4, 4 / 3)).numpy()
  np.testing.assert_array_equal(windows, [[(1000 - 13) // 2, 0, 13, 10]] * 16)


def fraction_changed(outputs, image):
  return np.mean([not np.array_equal(o, image) for o in outputs])


def test_grayscale_fraction_near_prob():
  image = colorful_image()
  outputs = over_seeds(lambda s: augmentations.random_grayscale(image, s, 0.2))
  gray = np.all(outputs[..., :1] == outputs, axis=(1, 2, 3))
  assert abs(gray.mean() - 0.2) < 0.04
  # The others are the input, untouched.
  np.testing.assert_array_equal(outputs[~gray], np.broadcast_to(image, outputs[~gray].shape))


def test_flip_fraction_near_half():
  image = colorful_image()
  outputs = over_seeds(lambda s: augmentations.random_flip(image, s, 0.5))
  flipped = np.all(outputs == image[:, ::-1], axis=(1, 2, 3))
  unchanged = np.all(outputs == image, axis=(1, 2, 3))
  assert (flipped ^ unchanged).all()
  assert abs(flipped.mean() - 0.5) < 0.04


def test_color_jitter_is_identity_at_zero_strength_and_varies_otherwise():
  image = colorful_image()
  seed = tf.constant([3, 4])
  unchanged = augmentations.color_jitter(image, seed, 0.0, 0.0, 0.0, 0.0)
  np.testing.assert_allclose(unchanged, image, atol=1e-5)
  jittered = over_seeds(lambda s: augmentations.color_jitter(image, s, 0.4, 0.4, 0.4, 0.1),
                        num=64)
  assert (jittered.min() >= 0).all() and (jittered.max() <= 1).all()
  # Different seeds give different factors and orders, hence different images.
  assert len({o.tobytes() for o in jittered}) == 64


def test_color_jitter_draws_every_order_uniformly():
  _, orders = over_seeds(lambda s: augmentations.color_jitter_params(s, 0.4, 0.4, 0.4, 0.1),
                         num=2400)
  counts = {}
  for order in map(tuple, orders):
    counts[order] = counts.get(order, 0) + 1
  assert len(counts) == 24 and all(50 < c < 150 for c in counts.values())


def test_color_jitter_applies_its_params_in_order():
  image = colorful_image()
  for seed in ([0, 1], [5, 9], [2, 3]):
    factors, order = augmentations.color_jitter_params(tf.constant(seed), 0.4, 0.4, 0.4,
                                                       0.1)
    expected = image
    for op in order.numpy():
      expected = augmentations.JITTER_ADJUSTMENTS[op](expected, factors[op])
    jittered = augmentations.color_jitter(image, tf.constant(seed), 0.4, 0.4, 0.4, 0.1)
    np.testing.assert_allclose(jittered, expected, atol=1e-6)
  # The order matters (clipping): brightness up then contrast down differs from the reverse.
  up, down = (lambda x: augmentations.adjust_brightness(x, 1.4),
              lambda x: augmentations.adjust_contrast(x, 0.6))
  assert not np.allclose(down(up(image)), up(down(image)), atol=1e-3)


def test_gaussian_blur_changes_image_only_when_applied():
  noise = np.random.default_rng(0).uniform(0, 1, (32, 32, 3)).astype(np.float32)
  kernel = augmentations.gaussian_kernel_size(32, 0.1)
  blur = lambda p: lambda s: augmentations.random_gaussian_blur(noise, s, p, (0.1, 2.0),
                                                                kernel)
  never, always, half = (over_seeds(blur(p), num=400) for p in (0.0, 1.0, 0.5))
  assert fraction_changed(never, noise) == 0
  assert fraction_changed(always, noise) > 0.95  # sigma near 0.1 barely blurs.
  assert abs(fraction_changed(half, noise) - 0.5) < 0.08
  # Blurring removes high frequencies: neighbouring pixels get closer.
  roughness = lambda x: np.abs(np.diff(x, axis=-2)).mean()
  assert roughness(always) < 0.8 * roughness(noise)


def test_gaussian_blur_keeps_constants_and_smooths_more_with_sigma():
  constant = np.full((24, 24, 3), 0.3, np.float32)
  np.testing.assert_allclose(augmentations.gaussian_blur(constant, 1.5, 5), constant,
                             atol=1e-6)
  noise = np.random.default_rng(1).uniform(0, 1, (24, 24, 3)).astype(np.float32)
  small, large = (augmentations.gaussian_blur(noise, s, 23).numpy() for s in (0.5, 2.0))
  assert small.shape == noise.shape
  assert np.std(large) < np.std(small) < np.std(noise)


def test_gaussian_kernel_size_is_ten_percent_and_odd():
  assert augmentations.gaussian_kernel_size(224, 0.1) == 23
  assert augmentations.gaussian_kernel_size(96, 0.1) == 9
  assert augmentations.gaussian_kernel_size(32, 0.1) == 3


def encode(image_uint8, fmt):
  return (tf.io.encode_jpeg(image_uint8, quality=95) if fmt == 'jpeg'
          else tf.io.encode_png(image_uint8))


def test_jpeg_union_decode_matches_full_decode():
  image = tf.cast(colorful_image(64, detail=32) * 255, tf.uint8)
  jpeg = encode(image, 'jpeg')
  windows = tf.constant([[4, 8, 20, 30], [30, 2, 30, 16]])
  pixels, relative = augmentations.decode_windows(jpeg, lambda shape: windows)
  # Only the union [4:60, 2:38] is decoded.
  assert pixels.shape == (56, 36, 3)
  full = tf.io.decode_jpeg(jpeg, dct_method=augmentations.Decoding().dct_method).numpy().astype(
      np.float32)
  for (y, x, h, w), (ry, rx, _, _) in zip(windows.numpy(), relative.numpy()):
    crop = pixels.numpy()[ry:ry + h, rx:rx + w].astype(np.float32)
    assert np.abs(crop - full[y:y + h, x:x + w]).mean() < 1.0


@pytest.fixture
def aug():
  return base.get_augmentation_config()


# MoCo v2's augmentation (moco/main_moco.py --aug-plus), which main_simsiam.py copies:
# RandomResizedCrop(224, scale=(0.2, 1.)), RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)],
# p=0.8), RandomGrayscale(p=0.2), RandomApply([GaussianBlur([.1, 2.])], p=0.5),
# RandomHorizontalFlip().
PAPER_RECIPE = {'crop_scale': (0.2, 1.0), 'crop_ratio': (3 / 4, 4 / 3), 'brightness': 0.4,
                'contrast': 0.4, 'saturation': 0.4, 'hue': 0.1, 'color_jitter_prob': 0.8,
                'grayscale_prob': 0.2, 'blur_prob': 0.5, 'blur_sigma': (0.1, 2.0),
                'flip_prob': 0.5}
APPLY_PROBABILITIES = ('color_jitter_prob', 'grayscale_prob', 'blur_prob', 'flip_prob')


def test_the_default_augmentation_is_the_official_recipe(aug):
  for field, value in PAPER_RECIPE.items():
    np.testing.assert_allclose(aug[field], value, err_msg=field)


def test_each_op_of_a_view_is_applied_with_its_own_probability(aug):
  """Over 2000 seeds, a view differs from the same seed's view without op X in a fraction
  of the draws equal to X's probability in the default config (the paper's, pinned above),
  and grayscale views (equal channels) are 20% of all."""
  aug.blur_sigma = (1.0, 2.0)  # Every applied blur shows; the recipe's range is pinned above.
  image = colorful_image()
  views = lambda a: over_seeds(lambda s: augmentations.augment_view(image, s, a, 32))
  full = views(aug)
  for field in APPLY_PROBABILITIES:
    without = aug.copy_and_resolve_references()
    without[field] = 0.0
    fraction = np.mean(np.any(views(without) != full, axis=(1, 2, 3)))
    assert abs(fraction - PAPER_RECIPE[field]) < 0.04, (field, fraction)
  gray = np.all(full[..., :1] == full, axis=(1, 2, 3))
  assert abs(gray.mean() - PAPER_RECIPE['grayscale_prob']) < 0.04


def _torchvision_crop_areas(rng, num, scale, ratio, height, width):
  """Area fractions of torchvision's RandomResizedCrop.get_params, in numpy."""
  areas = []
  for _ in range(num):
    for _ in range(10):
      target = height * width * rng.uniform(*scale)
      aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
      w, h = round(np.sqrt(target * aspect)), round(np.sqrt(target / aspect))
      if 0 < w <= width and 0 < h <= height:
        areas.append(h * w / (height * width))
        break
    else:
      areas.append(1.0)  # Central crop of the whole (square) image.
  return np.array(areas)


def test_crop_areas_are_distributed_as_torchvisions_for_the_papers_scale(aug):
  """The default config's crops: the area distribution of torchvision's RandomResizedCrop
  with scale (0.2, 1) and ratio (3/4, 4/3) on a square image (mean about 0.54, not the 0.48
  of scale (0.08, 1), the linear-evaluation crops)."""
  side = 224
  windows = augmentations.random_resized_crop_windows(
      [side, side], tf.constant([0, 1]), 4 * DRAWS, aug.crop_scale, aug.crop_ratio).numpy()
  ours = windows[:, 2] * windows[:, 3] / side**2
  reference = _torchvision_crop_areas(np.random.default_rng(0), 4 * DRAWS,
                                      PAPER_RECIPE['crop_scale'], PAPER_RECIPE['crop_ratio'],
                                      side, side)
  standard_error = reference.std() / np.sqrt(len(ours))
  assert abs(ours.mean() - reference.mean()) < 4 * standard_error, (ours.mean(),
                                                                   reference.mean())
  assert abs(ours.min() - 0.2) < 0.01 and ours.max() > 0.99
  for q in (0.1, 0.5, 0.9):
    assert abs(np.quantile(ours, q) - np.quantile(reference, q)) < 0.02, q


def test_color_jitter_factors_span_the_papers_ranges(aug):
  """ColorJitter(0.4, 0.4, 0.4, 0.1): brightness, contrast and saturation factors uniform
  over [0.6, 1.4], the hue shift over [-0.1, 0.1]."""
  factors, _ = over_seeds(lambda s: augmentations.color_jitter_params(
      s, aug.brightness, aug.contrast, aug.saturation, aug.hue))
  for column, (low, high) in enumerate([(0.6, 1.4)] * 3 + [(-0.1, 0.1)]):
    values = factors[:, column]
    width = high - low
    assert low - 1e-6 <= values.min() < low + 0.01 * width, column
    assert high - 0.01 * width < values.max() <= high + 1e-6, column
    assert abs(values.mean() - (low + high) / 2) < 0.03 * width, column


def test_two_views_are_uint8_independent_and_deterministic(aug):
  image = tf.cast(colorful_image(48) * 255, tf.uint8)
  jpeg = encode(image, 'jpeg')
  seed = tf.constant([7, 11], tf.int64)
  view1, view2 = augmentations.two_views(jpeg, seed, aug, 32)
  assert view1.dtype == tf.uint8 and view1.shape == (32, 32, 3)
  assert not np.array_equal(view1, view2)
  again = augmentations.two_views(jpeg, seed, aug, 32)
  np.testing.assert_array_equal(view1, again[0])
  np.testing.assert_array_equal(view2, again[1])
  other = augmentations.two_views(jpeg, tf.constant([7, 12], tf.int64), aug, 32)
  assert not np.array_equal(view1, other[0])


def test_two_views_same_for_png_bytes_and_pixels(aug):
  image = tf.cast(colorful_image(40) * 255, tf.uint8)
  seed = tf.constant([1, 2], tf.int64)
  from_png = augmentations.two_views(encode(image, 'png'), seed, aug, 32)
  from_pixels = augmentations.two_views(image, seed, aug, 32)
  for a, b in zip(from_png, from_pixels):
    np.testing.assert_array_equal(a, b)


def test_center_view_resizes_central_crop():
  image = tf.cast(colorful_image(40) * 255, tf.uint8)
  np.testing.assert_array_equal(augmentations.center_view(image, 40, 1.0), image)
  cropped = augmentations.center_view(encode(image, 'png'), 20, 0.5)
  np.testing.assert_array_equal(cropped, image[10:30, 10:30])


def _pil(array):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return Image.fromarray(np.asarray(array))


def test_accurate_idct_decodes_jpegs_as_pil_does():
  """torchvision decodes with PIL, whose libjpeg uses the accurate integer IDCT."""
  import io  # pylint: disable=g-import-not-at-top
  image = np.asarray(tf.cast(colorful_image(64, detail=32) * 255, tf.uint8))
  buffer = io.BytesIO()
  _pil(image).save(buffer, format='JPEG', quality=90)
  jpeg = buffer.getvalue()
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pil = np.asarray(Image.open(io.BytesIO(jpeg)).convert('RGB')).astype(int)
  full = lambda shape: tf.constant([[0, 0, 64, 64]])
  decoded = {method: augmentations.decode_windows(tf.constant(jpeg), full, augmentations.Decoding(
      dct_method=method))[0].numpy().astype(int) for method in data.JPEG_DCT_METHODS}
  assert np.abs(decoded['INTEGER_ACCURATE'] - pil).max() <= 1
  assert np.abs(decoded['INTEGER_FAST'] - pil).sum() > np.abs(
      decoded['INTEGER_ACCURATE'] - pil).sum()
  assert augmentations.Decoding().dct_method == 'INTEGER_ACCURATE'  # The default.


def test_antialiased_shrinking_is_close_to_pils_bilinear():
  """PIL's bilinear filter widens with the shrink factor; without antialiasing a 4x shrink
  samples 4 of every 16 pixels and aliases the fine detail."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  pil = np.asarray(_pil(noise).resize((16, 16), Image.BILINEAR)).astype(np.float32) / 255
  window = tf.constant([[0, 0, 64, 64]])
  errors = {antialias: np.abs(augmentations.crop_and_resize(noise, window, 16, antialias)[0]
                              - pil).mean() for antialias in (True, False)}
  assert errors[True] < 0.02 < 0.1 < errors[False]
