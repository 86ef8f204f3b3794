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


# The jitter's ops, in the order of ViewParams.factors (and of augmentations.JITTER_ADJUSTMENTS).
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


def blend_adjustment(image, factor, op):
  """Brightness, contrast or saturation (`op`, which may be traced): each blends the image
  with black, its mean luma or its luma, and clips."""
  gray = luma(image)
  other = jnp.where(op == CONTRAST, jnp.mean(gray), jnp.where(op == SATURATION, gray, 0.0))
  return jnp.clip(factor * image + (1.0 - factor) * other, 0.0, 1.0)


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
  """TensorFlow's HSV to RGB, as deepmind-research byol writes it (comparisons, not
  jnp.isin: the TPU compiler materialised isin's comparisons, 13% of the ops' bytes)."""
  chroma = saturation * value
  sector = (hue % 1.0) * 6.0
  x = chroma * (1 - jnp.abs(sector % 2.0 - 1))
  index = jnp.floor(sector).astype(jnp.int32)
  # Each channel's share in each of the six sectors: chroma (c), x or 0.
  pick = lambda c_at, x_at: jnp.where(
      (index == c_at[0]) | (index == c_at[1]), chroma,
      jnp.where((index == x_at[0]) | (index == x_at[1]), x, 0.0))
  minimum = value - chroma
  return jnp.stack([pick((0, 5), (1, 4)), pick((1, 2), (0, 3)), pick((3, 4), (2, 5))],
                   axis=-1) + minimum[..., None]


def adjust_hue(image, delta):
  """tf.image.adjust_hue: the hue rotated by delta (a fraction of the circle)."""
  hue, saturation, value = rgb_to_hsv(image)
  return hsv_to_rgb((hue + delta) % 1.0, saturation, value)


def color_jitter(image, factors, order):
  """The four adjustments with their factors, in `order`.

  Under vmap every branch runs for every image: a switch over the four ops at each of the
  four positions would compute the hue's HSV round trip four times (the ops' costliest
  part: most of their HBM traffic on a TPU). The three blends share one form, so the
  positions before the hue blend, the hue turns once, and the positions after it blend.
  """
  hue_at = jnp.argmax(order == HUE)
  for position in range(3):  # Position 3 cannot come before the hue.
    op = order[position]
    image = jnp.where(position < hue_at, blend_adjustment(image, factors[op], op), image)
  image = adjust_hue(image, factors[HUE])
  for position in range(1, 4):
    op = order[position]
    image = jnp.where(position > hue_at, blend_adjustment(image, factors[op], op), image)
  return image


def blur_by_shifted_sums(padded, weights):
  """The separable blur of a reflect-padded [H + 2r, W + 2r, 3] as weighted sums of shifted
  copies: one fused loop per axis."""
  kernel_size = weights.shape[0]
  height, width = (n - kernel_size + 1 for n in padded.shape[:2])
  vertical = sum(weights[t] * padded[t:t + height] for t in range(kernel_size))
  return sum(weights[t] * vertical[:, t:t + width] for t in range(kernel_size))


def blur_by_convolutions(padded, weights):
  """The same as two convolutions of each channel (under vmap, grouped convolutions), at
  float32 precision (a TPU's default would round the operands to bfloat16)."""
  channels = padded.transpose(2, 0, 1)[:, None]  # [3, 1, H + 2r, W + 2r]
  for kernel in (weights[None, None, :, None], weights[None, None, None, :]):
    channels = jax.lax.conv_general_dilated(channels, kernel, (1, 1), 'VALID',
                                            precision=jax.lax.Precision.HIGHEST)
  return channels[:, 0].transpose(1, 2, 0)


def gaussian_blur(image, sigma, kernel_size: int):
  """Separable Gaussian blur of [H, W, 3], reflecting at the borders, with all kernel_size
  taps (the host drops those beyond 4 sigma: under a hundredth of a uint8 level).

  On a TPU as convolutions: XLA's cost analysis of the blur alone, at ImageNet's batch on a
  v4 chip, gives them 2.5 GB of memory traffic per step against 9.2 GB for the shifted
  sums (BENCHMARKS.md). Elsewhere as shifted sums: on the CPU the convolutions made the
  device ops 3.6x slower.
  """
  radius = kernel_size // 2
  offsets = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  weights = jnp.exp(-0.5 * jnp.square(offsets / sigma))
  weights /= jnp.sum(weights)
  padded = jnp.pad(image, [(radius, radius), (radius, radius), (0, 0)], mode='reflect')
  return jax.lax.platform_dependent(padded, weights, tpu=blur_by_convolutions,
                                    default=blur_by_shifted_sums)


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
