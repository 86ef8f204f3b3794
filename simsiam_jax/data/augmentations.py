"""The MoCo v2 augmentation recipe as TensorFlow ops on single images.

Every random op takes a `seed` (an int32/int64 tensor of shape [2]) and draws with
`tf.random.stateless_*`, so an augmentation is a pure function of the image and the seed:
the pipeline derives seeds from (config.seed, position in the batch stream, view), which
makes it reproducible and restartable at any step.

Images flow through the ops as float32 in [0, 1]; `two_views` takes encoded bytes or uint8
pixels and returns uint8 views, which the device normalizes.

The ops follow torchvision's definitions (the official SimSiam code uses torchvision):
RandomResizedCrop samples area and log-aspect-ratio uniformly with 10 attempts and a
central-crop fallback; ColorJitter multiplies (brightness), blends with the grayscale mean
(contrast) or the grayscale image (saturation), rotates hue, in a random order; grayscale
uses the ITU-R 601-2 luma weights.
"""

import dataclasses
import math
from typing import Sequence

import tensorflow as tf

from simsiam_jax.data import LUMA_WEIGHTS, gaussian_kernel_size, jitter_factor_ranges

_CROP_ATTEMPTS = 10


@dataclasses.dataclass(frozen=True)
class Decoding:
  """How pixels are decoded and resized (config.data.resize_antialias, jpeg_dct_method).

  PIL, which torchvision uses, decodes JPEGs with libjpeg's accurate integer IDCT (free here:
  the default) and shrinks crops with an antialiased (area-weighted) bilinear filter, which
  costs a quarter of the pipeline's throughput (BENCHMARKS.md) and is off by default.
  """
  antialias: bool = False
  dct_method: str = 'INTEGER_ACCURATE'


def uniform(seed, shape=(), minval=0.0, maxval=1.0):
  return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval)


def random_resized_crop_windows(image_shape, seed, num: int, scale: Sequence[float],
                                ratio: Sequence[float]):
  """`num` independent draws of torchvision's RandomResizedCrop.get_params.

  Returns windows [num, 4] of (y, x, h, w) in an image of shape `image_shape`. All
  attempts of all draws are sampled at once and each draw takes its first that fits.
  """
  height = tf.cast(image_shape[0], tf.float32)
  width = tf.cast(image_shape[1], tf.float32)
  area_seed, ratio_seed, offset_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  target_area = height * width * uniform(area_seed, [num, _CROP_ATTEMPTS], *scale)
  aspect = tf.exp(uniform(ratio_seed, [num, _CROP_ATTEMPTS], math.log(ratio[0]),
                          math.log(ratio[1])))
  crop_w = tf.round(tf.sqrt(target_area * aspect))
  crop_h = tf.round(tf.sqrt(target_area / aspect))
  fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
  first = tf.argmax(tf.cast(fits, tf.int32), axis=1)[:, None]
  crop_w = tf.gather(crop_w, first, batch_dims=1)[:, 0]
  crop_h = tf.gather(crop_h, first, batch_dims=1)[:, 0]
  offset = uniform(offset_seed, [2, num])
  y = tf.floor(offset[0] * (height - crop_h + 1))
  x = tf.floor(offset[1] * (width - crop_w + 1))

  # When no attempt fits: the largest central crop with the aspect ratio clamped.
  in_ratio = width / height
  fallback_w = tf.where(in_ratio > ratio[1], tf.round(height * ratio[1]), width)
  fallback_h = tf.where(in_ratio < ratio[0], tf.round(width / ratio[0]), height)
  fallback = tf.stack([(height - fallback_h) // 2, (width - fallback_w) // 2,
                       fallback_h, fallback_w])
  windows = tf.where(tf.reduce_any(fits, axis=1, keepdims=True),
                     tf.stack([y, x, crop_h, crop_w], axis=1), fallback[None])
  return tf.ensure_shape(tf.cast(windows, tf.int32), [num, 4])


def center_crop_window(image_shape, crop_fraction: float):
  """The central square of side crop_fraction * shorter side (resize-then-center-crop)."""
  height, width = image_shape[0], image_shape[1]
  side = tf.maximum(
      tf.cast(crop_fraction * tf.cast(tf.minimum(height, width), tf.float32), tf.int32), 1)
  return tf.stack([(height - side) // 2, (width - side) // 2, side, side])


def decode_windows(image, windows_fn, decoding: Decoding = Decoding()):
  """Decodes `image` once and returns (pixels, windows relative to those pixels).

  `image` is encoded bytes (JPEG, PNG, ...) or uint8 pixels [H, W, 3]; `windows_fn` maps
  the image shape [H, W] to crop windows [k, 4]. A JPEG is decoded only inside the union
  of the windows, as flax's ImageNet pipeline does for its single crop.
  """
  if image.dtype != tf.string:
    return image, windows_fn(tf.shape(image)[:2])

  def decode_jpeg_union():
    windows = windows_fn(tf.io.extract_jpeg_shape(image)[:2])
    top_left = tf.reduce_min(windows[:, :2], axis=0)
    bottom_right = tf.reduce_max(windows[:, :2] + windows[:, 2:], axis=0)
    union = tf.concat([top_left, bottom_right - top_left], axis=0)
    # A truncated JPEG decodes with its missing rows gray instead of failing mid-epoch.
    pixels = tf.io.decode_and_crop_jpeg(
        image, union, channels=3, try_recover_truncated=True, acceptable_fraction=0.0,
        dct_method=decoding.dct_method)
    return pixels, windows - tf.concat([top_left, [0, 0]], axis=0)

  def decode_other():
    pixels = tf.io.decode_image(image, channels=3, expand_animations=False)
    pixels.set_shape([None, None, 3])
    return pixels, windows_fn(tf.shape(pixels)[:2])

  return tf.cond(tf.io.is_jpeg(image), decode_jpeg_union, decode_other)


def crop_and_resize(pixels, windows, size: int, antialias: bool = False):
  """Each window [y, x, h, w] of uint8 `pixels`, resized (bilinear) to size x size; with
  `antialias`, a shrunk window is filtered over its whole footprint, as PIL does.

  Returns float32 [k, size, size, 3] in [0, 1] for the k windows.
  """
  crops = [tf.image.resize(tf.slice(pixels, [y, x, 0], [h, w, 3]), [size, size],
                           antialias=antialias)
           for y, x, h, w in map(tf.unstack, tf.unstack(windows))]
  return tf.stack(crops) / 255.0


def luma(image):
  """ITU-R 601-2 luma [H, W, 1], as tf.image.rgb_to_grayscale, in fewer ops."""
  image = tf.convert_to_tensor(image)
  red, green, blue = LUMA_WEIGHTS
  return image[..., :1] * red + image[..., 1:2] * green + image[..., 2:] * blue


def grayscale(image):
  return tf.image.grayscale_to_rgb(luma(image))


def _blend(image, other, factor):
  return tf.clip_by_value(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(image, factor):
  return tf.clip_by_value(image * factor, 0.0, 1.0)


def adjust_contrast(image, factor):
  return _blend(image, tf.reduce_mean(luma(image)), factor)


def adjust_saturation(image, factor):
  return _blend(image, luma(image), factor)


def adjust_hue(image, delta):
  return tf.image.adjust_hue(image, delta)


JITTER_ADJUSTMENTS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter_params(seed, brightness: float, contrast: float, saturation: float,
                        hue: float):
  """torchvision's ColorJitter.get_params: the factors of JITTER_ADJUSTMENTS and the
  random order to apply them in."""
  factor_seed, order_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  low, high = map(tf.constant, jitter_factor_ranges(brightness, contrast, saturation, hue))
  factors = low + (high - low) * uniform(factor_seed, [4])
  return factors, tf.argsort(uniform(order_seed, [4]))


def color_jitter(image, seed, brightness: float, contrast: float, saturation: float,
                 hue: float):
  """torchvision's ColorJitter: the four adjustments in a random order."""
  factors, order = color_jitter_params(seed, brightness, contrast, saturation, hue)
  for position in range(len(JITTER_ADJUSTMENTS)):
    op = order[position]
    image = tf.switch_case(
        op, [lambda fn=fn: fn(image, factors[op]) for fn in JITTER_ADJUSTMENTS])
  return image


def gaussian_blur(image, sigma, kernel_size: int):
  """Separable Gaussian blur of an [H, W, 3] image, reflecting at the borders.

  Taps beyond 4 sigma are dropped (they carry < 1e-4 of the weight, under a hundredth of
  a uint8 level): at sigma 1 that is 9 taps instead of 23, the same image for half the
  work.
  """
  radius = tf.minimum(kernel_size // 2, tf.cast(tf.math.ceil(4.0 * sigma), tf.int32))
  x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
  kernel = tf.exp(-0.5 * tf.square(x / sigma))
  kernel /= tf.reduce_sum(kernel)
  padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]],
                  mode='REFLECT')
  vertical = tf.tile(kernel[:, None, None, None], [1, 1, 3, 1])
  horizontal = tf.transpose(vertical, [1, 0, 2, 3])
  blurred = tf.nn.depthwise_conv2d(padded, vertical, [1, 1, 1, 1], 'VALID')
  blurred = tf.nn.depthwise_conv2d(blurred, horizontal, [1, 1, 1, 1], 'VALID')
  return blurred[0]


def random_apply(fn, image, seed, prob: float):
  """fn(image) with probability `prob`, else the image; only the taken branch runs."""
  if prob <= 0:
    return image
  return tf.cond(uniform(seed) < prob, lambda: fn(image), lambda: image)


def random_color_jitter(image, seed, aug):
  apply_seed, jitter_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  jitter = lambda x: color_jitter(x, jitter_seed, aug.brightness, aug.contrast,
                                  aug.saturation, aug.hue)
  return random_apply(jitter, image, apply_seed, aug.color_jitter_prob)


def random_grayscale(image, seed, prob: float):
  return random_apply(grayscale, image, seed, prob)


def random_gaussian_blur(image, seed, prob: float, sigma_range: Sequence[float],
                         kernel_size: int):
  apply_seed, sigma_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  sigma = uniform(sigma_seed, (), *sigma_range)
  return random_apply(lambda x: gaussian_blur(x, sigma, kernel_size), image, apply_seed,
                      prob)


def random_flip(image, seed, prob: float):
  return random_apply(lambda x: x[:, ::-1], image, seed, prob)


def to_uint8(image):
  return tf.cast(tf.clip_by_value(tf.round(image * 255.0), 0, 255), tf.uint8)


def augment_view(image, seed, aug, image_size: int):
  """Everything after the crop, in the recipe's order, on one float32 view."""
  jitter_seed, gray_seed, blur_seed, flip_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  image = random_color_jitter(image, jitter_seed, aug)
  image = random_grayscale(image, gray_seed, aug.grayscale_prob)
  image = random_gaussian_blur(
      image, blur_seed, aug.blur_prob, aug.blur_sigma,
      gaussian_kernel_size(image_size, aug.blur_kernel_fraction))
  # Flipping commutes with the conversion, and moves a quarter of the bytes after it.
  return random_flip(to_uint8(image), flip_seed, aug.flip_prob)


def two_views(image, seed, aug, image_size: int, decoding: Decoding = Decoding(),
              augment: bool = True):
  """Two independently augmented uint8 views [image_size, image_size, 3] of one image.

  The image is decoded once; both crops are cut from it. Without `augment`, the two crops
  as they are (the same crops): the train step augments them (device_augmentations.py).
  """
  crop_seed, view1_seed, view2_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  pixels, windows = decode_windows(
      image, lambda shape: random_resized_crop_windows(shape, crop_seed, 2, aug.crop_scale,
                                                       aug.crop_ratio), decoding)
  crops = crop_and_resize(pixels, windows, image_size, decoding.antialias)
  if not augment:
    return to_uint8(crops[0]), to_uint8(crops[1])
  return (augment_view(crops[0], view1_seed, aug, image_size),
          augment_view(crops[1], view2_seed, aug, image_size))


def crop_and_flip_view(image, seed, crop_scale: Sequence[float], crop_ratio: Sequence[float],
                       image_size: int, flip_prob: float = 0.5,
                       decoding: Decoding = Decoding()):
  """The linear-evaluation training view: RandomResizedCrop and horizontal flip, uint8."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  pixels, windows = decode_windows(
      image, lambda shape: random_resized_crop_windows(shape, crop_seed, 1, crop_scale,
                                                       crop_ratio), decoding)
  view = crop_and_resize(pixels, windows, image_size, decoding.antialias)[0]
  return random_flip(to_uint8(view), flip_seed, flip_prob)


def center_view(image, image_size: int, crop_fraction: float, decoding: Decoding = Decoding()):
  """The evaluation view: central crop (crop_fraction of the shorter side), resized."""
  pixels, windows = decode_windows(
      image, lambda shape: center_crop_window(shape, crop_fraction)[None], decoding)
  return to_uint8(crop_and_resize(pixels, windows, image_size, decoding.antialias)[0])
