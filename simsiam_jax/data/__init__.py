"""The host input pipeline: data sources (datasets), the augmentation recipe as TensorFlow
ops (augmentations), the tf.data streams of views and evaluation batches (input_pipeline),
and the normalisation done on the device (preprocess).

The recipe after the crop also exists as JAX ops (device_augmentations), which the train
step runs with config.data.augment_on='device'.

The package itself holds only what loads without TensorFlow and is needed by the config
checks, the command line's error exit or both sets of ops: `DataError`, the choices of the
data fields, and the constants the host's and the device's ops share.
"""


class DataError(ValueError):
  """A data source cannot be read as the config says; the message names the field or path."""


# config.data.jpeg_dct_method: libjpeg's accurate integer IDCT, as PIL decodes (torchvision),
# or the fast one (a few levels off PIL's).
JPEG_DCT_METHODS = ('INTEGER_ACCURATE', 'INTEGER_FAST')

# config.data.augment_on: where the recipe after the crop runs. 'host': all of it in the
# tf.data pipeline; 'device': the host decodes, crops and resizes, the train step does the
# rest (device_augmentations.py); 'auto': the faster of the two on the platform the step
# runs on (AUTO_AUGMENT_ON).
AUGMENT_ON = ('host', 'device', 'auto')
# What 'auto' means on each platform (jax.default_backend()'s names), from BENCHMARKS.md's
# input budget: an 8xH100 host's cores give 39% of the images its GPUs want in host mode,
# 154% in device mode; a TPU host's keep its chips fed either way, and the device ops add
# about 8% to a ResNet-50 step on a TPU (memory traffic); on a CPU they run on the cores
# that feed the step.
AUTO_AUGMENT_ON = {'gpu': 'device', 'tpu': 'host', 'cpu': 'host'}


def resolved_augment_on(augment_on: str, platform: str) -> str:
  """'host' or 'device': config.data.augment_on, 'auto' resolved for the step's `platform`
  ('cpu', 'gpu' or 'tpu'; host mode on any other)."""
  if augment_on == 'auto':
    return AUTO_AUGMENT_ON.get(platform, 'host')
  return augment_on

# ITU-R 601-2 luma, as PIL's (torchvision's) grayscale conversion.
LUMA_WEIGHTS = (0.2989, 0.587, 0.114)


def gaussian_kernel_size(image_size: int, kernel_fraction: float) -> int:
  """Odd kernel side closest below kernel_fraction * image_size (23 at 224)."""
  return max(int(kernel_fraction * image_size) // 2 * 2 + 1, 3)


def jitter_factor_ranges(brightness: float, contrast: float, saturation: float,
                         hue: float) -> tuple[list[float], list[float]]:
  """(low, high) of torchvision's ColorJitter factors: brightness, contrast and saturation
  factors, and the hue shift, in the order of the jitter's adjustments."""
  return ([max(0.0, 1.0 - brightness), 1.0 - contrast, 1.0 - saturation, -hue],
          [1.0 + brightness, 1.0 + contrast, 1.0 + saturation, hue])
