"""The recipe after the crop as JAX ops in the train step (config.data.augment_on='device').

The host then only decodes, crops and resizes (augmentations.two_views with augment=False);
color jitter, grayscale, Gaussian blur and the flip run on the accelerator, sharded over the
batch like the rest of the step, as deepmind-research's BYOL does (byol/utils/augmentations.py,
`postprocess` inside the jitted update). At 224 px they are about 4.7 ms of host CPU per
image in host mode and a fraction of a percent of a ResNet-50 step's FLOPs here
(BENCHMARKS.md).

The ops are the host's (augmentations.py: torchvision's definitions; the hue rotation is
TensorFlow's HSV round trip, as there), so that for the same parameters both give the same
uint8 view to one level. The parameters of each view are drawn with `jax.random` from
(config.seed, step, the example's row in the global batch, view): the same batch is
augmented the same on any number of hosts and devices, and a resumed run (whose state
carries the step) continues exactly.

Under vmap every op runs on every image and a select keeps it or not: on an accelerator
that costs less than a branch per image, and the FLOPs are small (BENCHMARKS.md).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from simsiam_jax.data import LUMA_WEIGHTS, gaussian_kernel_size, jitter_factor_ranges


class ViewParams(NamedTuple):
  """One view's random draws (a leading batch axis under vmap)."""
  jitter: jax.Array  # bool: color jitter applied.
  factors: jax.Array  # [4]: brightness, contrast, saturation factors and hue shift.
  order: jax.Array  # [4] int32: the jitter's ops in the order applied (a permutation).
  grayscale: jax.Array  # bool
  blur: jax.Array  # bool
  sigma: jax.Array  # The blur's sigma (drawn whether or not it is applied).
  flip: jax.Array  # bool


def draw_view_params(key, aug) -> ViewParams:
  """torchvision's draws for one view of the recipe in `aug` (config.aug): each op with its
  probability, ColorJitter.get_params' factors and random order, the blur's sigma."""
  # One call to the generator for all thirteen: each further call is compiled apart.
  u = jax.random.uniform(key, (13,))
  low, high = (jnp.array(bound, jnp.float32) for bound in jitter_factor_ranges(
      aug.brightness, aug.contrast, aug.saturation, aug.hue))
  sigma_low, sigma_high = aug.blur_sigma
  return ViewParams(
      jitter=u[0] < aug.color_jitter_prob,
      factors=low + (high - low) * u[1:5],
      # The ranks of four uniform draws: each permutation equally likely (as the host's).
      order=jnp.argsort(u[5:9]).astype(jnp.int32),
      grayscale=u[9] < aug.grayscale_prob,
      blur=u[10] < aug.blur_prob,
      sigma=sigma_low + (sigma_high - sigma_low) * u[11],
      flip=u[12] < aug.flip_prob)


def luma(image):
  """ITU-R 601-2 luma [H, W, 1] of float [H, W, 3]."""
  return image @ jnp.asarray(LUMA_WEIGHTS, image.dtype)[:, None]


def grayscale(image):
  return jnp.broadcast_to(luma(image), image.shape)


def _blend(image, other, factor):
  return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def adjust_brightness(image, factor):
  return jnp.clip(image * factor, 0.0, 1.0)


def adjust_contrast(image, factor):
  return _blend(image, jnp.mean(luma(image)), factor)


def adjust_saturation(image, factor):
  return _blend(image, luma(image), factor)


def rgb_to_hsv(image):
  """TensorFlow's RGB to HSV (hue in [0, 1)), as deepmind-research byol transcribes it."""
  r, g, b = image[..., 0], image[..., 1], image[..., 2]
  value = jnp.maximum(jnp.maximum(r, g), b)
  spread = value - jnp.minimum(jnp.minimum(r, g), b)
  saturation = jnp.where(value > 0, spread / jnp.where(value > 0, value, 1.0), 0.0)
  norm = 1.0 / (6.0 * jnp.where(spread > 0, spread, 1.0))
  hue = jnp.where(r == value, norm * (g - b),
                  jnp.where(g == value, norm * (b - r) + 2 / 6, norm * (r - g) + 4 / 6))
  hue = jnp.where(spread > 0, hue, 0.0)
  return hue + (hue < 0), saturation, value


def hsv_to_rgb(hue, saturation, value):
  chroma = saturation * value
  sector = (hue % 1.0) * 6.0
  x = chroma * (1 - jnp.abs(sector % 2.0 - 1))
  index = jnp.floor(sector).astype(jnp.int32)
  # Each channel's share in each of the six sectors: chroma (c), x or 0.
  pick = lambda c_at, x_at: jnp.where(
      jnp.isin(index, jnp.array(c_at)), chroma,
      jnp.where(jnp.isin(index, jnp.array(x_at)), x, 0.0))
  minimum = value - chroma
  return jnp.stack([pick((0, 5), (1, 4)), pick((1, 2), (0, 3)), pick((3, 4), (2, 5))],
                   axis=-1) + minimum[..., None]


def adjust_hue(image, delta):
  """tf.image.adjust_hue: the hue rotated by delta (a fraction of the circle)."""
  hue, saturation, value = rgb_to_hsv(image)
  return hsv_to_rgb((hue + delta) % 1.0, saturation, value)


# In the order of ViewParams.factors (and of augmentations.JITTER_ADJUSTMENTS).
JITTER_ADJUSTMENTS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(image, factors, order):
  """The four adjustments with their factors, in `order`."""
  branches = [lambda x, i=i, fn=fn: fn(x, factors[i]) for i, fn in enumerate(JITTER_ADJUSTMENTS)]
  # A loop, not four unrolled switches: under vmap each switch computes all four ops and
  # selects, and unrolled, XLA's fusion would copy each position's four into the next's.
  image, _ = jax.lax.scan(lambda x, op: (jax.lax.switch(op, branches, x), None), image, order)
  return image


def gaussian_blur(image, sigma, kernel_size: int):
  """Separable Gaussian blur of [H, W, 3], reflecting at the borders, with all kernel_size
  taps (the host drops those beyond 4 sigma: under a hundredth of a uint8 level)."""
  radius = kernel_size // 2
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * jnp.square(offsets / sigma))
  weights /= jnp.sum(weights)
  height, width = image.shape[:2]
  padded = jnp.pad(image, [(radius, radius), (radius, radius), (0, 0)], mode='reflect')
  # A weighted sum of shifted copies: one fused loop per axis on any backend, where a
  # convolution with a kernel per image is a grouped convolution.
  vertical = sum(weights[t] * padded[t:t + height] for t in range(kernel_size))
  return sum(weights[t] * vertical[:, t:t + width] for t in range(kernel_size))


def to_uint8(image):
  return jnp.clip(jnp.round(image * 255.0), 0, 255).astype(jnp.uint8)


def augment_view(crop, params: ViewParams, kernel_size: int):
  """One uint8 crop [H, W, 3] augmented with `params`, in the host recipe's order: color
  jitter, grayscale, blur (on float [0, 1]), then the flip; uint8 out."""
  image = crop.astype(jnp.float32) / 255.0
  image = jnp.where(params.jitter, color_jitter(image, params.factors, params.order), image)
  image = jnp.where(params.grayscale, grayscale(image), image)
  image = jnp.where(params.blur, gaussian_blur(image, params.sigma, kernel_size), image)
  image = to_uint8(image)
  return jnp.where(params.flip, image[:, ::-1], image)


def view_keys(seed: int, step, view: int, batch_size: int):
  """Keys [batch_size] of one view of the global batch of `step`: one per row."""
  step_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), view)
  return jax.vmap(lambda row: jax.random.fold_in(step_key, row))(jnp.arange(batch_size))


def augment_batch(batch: dict, step, seed: int, aug, image_size: int) -> dict:
  """`batch` with each of its uint8 crops 'view1', 'view2', ... augmented; the crops of the
  global batch of `step`, row r, view v, drawn from (seed, step, v, r)."""
  kernel_size = gaussian_kernel_size(image_size, aug.blur_kernel_fraction)
  augment = jax.vmap(lambda crop, key: augment_view(crop, draw_view_params(key, aug),
                                                    kernel_size))
  views = {}
  for name, crops in batch.items():
    if name.startswith('view'):
      views[name] = augment(crops, view_keys(seed, step, int(name[4:]), crops.shape[0]))
  return {**batch, **views}
