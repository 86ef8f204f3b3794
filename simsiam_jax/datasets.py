"""The three data sources: generated shapes, an image folder and TFDS.

A source split is a `Split`: its global size, its number of classes, and two functions the
input pipeline composes. `keys` lists this process's shard of the split as a tf.data
stream of cheap keys (example indices, or for TFDS the still-encoded records), optionally
reshuffled with a given seed; `read` turns a key into {'image', 'label'}, where 'image' is
encoded bytes or uint8 pixels. Keeping the two apart lets a resumed run skip keys without
reading or decoding the images behind them.
"""

import concurrent.futures
import dataclasses
import functools
import logging
import os
from typing import Callable

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
# Formats the folder source decodes; anything else in the folder is skipped.
_FOLDER_FORMATS = ('JPEG', 'PNG')
_SYNTHETIC_SPLITS = {'train': 0, 'test': 1}
SYNTHETIC_NUM_CLASSES = 10


class DataError(ValueError):
  """Unusable data or data config; the message names the config field or path."""


@dataclasses.dataclass(frozen=True)
class Split:
  num_examples: int
  num_classes: int
  # keys(process_index, process_count, shuffle_seed) -> tf.data.Dataset of keys.
  keys: Callable[..., tf.data.Dataset]
  # read(key) -> {'image': string or uint8 [H, W, 3], 'label': int32}.
  read: Callable[..., dict]


def load_split(data_config, field: str, seed: int) -> Split:
  """The split named by config.data.<field> of the source config.data.source."""
  split = data_config[field]
  if data_config.source == 'synthetic':
    if split not in _SYNTHETIC_SPLITS:
      raise DataError(f'config.data.{field}: the synthetic source has splits '
                      f'{sorted(_SYNTHETIC_SPLITS)}, not {split!r}')
    size_field = 'synthetic_train_examples' if split == 'train' else 'synthetic_eval_examples'
    return synthetic_split(split, data_config[size_field], data_config.image_size, seed)
  if data_config.source == 'folder':
    return folder_split(data_config.root, split, field, data_config.image_size,
                        data_config.validate_files)
  if data_config.source == 'tfds':
    return tfds_split(data_config.tfds_name, split, data_config.data_dir,
                      data_config.shuffle_buffer, field)
  raise DataError(f"config.data.source: unknown source {data_config.source!r}; "
                  "expected 'synthetic', 'folder' or 'tfds'")


def indexed_split(num_examples: int, num_classes: int, read) -> Split:
  """A split whose examples are read by index: shards by stride, shuffles by permutation."""

  def keys(process_index, process_count, shuffle_seed=None):
    indices = tf.range(process_index, num_examples, process_count, dtype=tf.int64)
    if shuffle_seed is not None:
      indices = tf.random.experimental.stateless_shuffle(indices, shuffle_seed)
    return tf.data.Dataset.from_tensor_slices(indices)

  return Split(num_examples, num_classes, keys, read)


# ---------------------------------------------------------------------------------------
# Generated shapes.


@functools.lru_cache(maxsize=8)
def synthetic_split(split: str, num_examples: int, image_size: int, seed: int) -> Split:
  images, labels = render_shapes(num_examples, image_size, seed, _SYNTHETIC_SPLITS[split])
  images, labels = tf.constant(images), tf.constant(labels)
  read = lambda i: {'image': tf.gather(images, i), 'label': tf.gather(labels, i)}
  return indexed_split(num_examples, SYNTHETIC_NUM_CLASSES, read)


def _shape_mask(label: int, xx, yy, center, radius, frequency, phase):
  """Foreground mask of class `label`; per-image parameters have shape [n, 1, 1]."""
  dx, dy = xx - center[0], yy - center[1]
  stripes = lambda t: np.sin(2 * np.pi * frequency * t + phase) > 0
  masks = {
      0: lambda: dx**2 + dy**2 < radius**2,  # disc
      1: lambda: np.maximum(abs(dx), abs(dy)) < 0.85 * radius,  # square
      2: lambda: (abs(dy) < radius) & (abs(dx) < 0.5 * (dy + radius)),  # triangle
      3: lambda: abs(np.sqrt(dx**2 + dy**2) - 0.8 * radius) < 0.2 * radius,  # ring
      4: lambda: (np.minimum(abs(dx), abs(dy)) < 0.3 * radius)  # cross
                 & (np.maximum(abs(dx), abs(dy)) < radius),
      5: lambda: abs(dx) + abs(dy) < radius,  # diamond
      6: lambda: stripes(yy),  # horizontal stripes
      7: lambda: stripes(xx),  # vertical stripes
      8: lambda: stripes(xx + yy),  # diagonal stripes
      9: lambda: (np.floor(xx * frequency) + np.floor(yy * frequency)) % 2 == 0,  # checkers
  }
  return masks[label]()


def render_shapes(num_examples: int, image_size: int, seed: int, stream: int):
  """Images of 10 shape/texture classes in random colors, sizes and places.

  Backgrounds are a color gradient with low-frequency waves and pixel noise, so that no
  class is recognizable from a constant. Deterministic in (seed, stream).
  Returns uint8 [n, size, size, 3] and int32 labels [n], classes balanced.
  """
  rng = np.random.default_rng([seed, stream])
  labels = rng.permutation(np.arange(num_examples) % SYNTHETIC_NUM_CLASSES).astype(np.int32)
  images = np.empty((num_examples, image_size, image_size, 3), np.uint8)
  grid = (np.arange(image_size, dtype=np.float32) + 0.5) / image_size
  xx, yy = grid[None, None, :], grid[None, :, None]
  for label in range(SYNTHETIC_NUM_CLASSES):
    index = np.flatnonzero(labels == label)
    n = len(index)
    param = lambda low, high, *shape: rng.uniform(low, high, (n, *shape, 1, 1)).astype(
        np.float32)
    mask = _shape_mask(label, xx, yy, center=(param(0.3, 0.7), param(0.3, 0.7)),
                       radius=param(0.15, 0.35), frequency=param(2.0, 6.0),
                       phase=param(0, 2 * np.pi))
    wave = 0.1 * np.sin(2 * np.pi * (param(0, 3) * xx + param(0, 3) * yy) + param(0, 7))
    background = (param(0, 1, 3) * (1 - xx) + param(0, 1, 3) * xx + wave[:, None])
    image = np.where(mask[:, None], param(0, 1, 3), background)
    image += 0.1 * (rng.random(image.shape, np.float32) - 0.5)
    images[index] = np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
  return images, labels


# ---------------------------------------------------------------------------------------
# Image folder: root/<split>/<class>/*.jpg|jpeg|png.


def folder_split(root: str, split: str, field: str, image_size: int,
                 validate_files: bool) -> Split:
  paths, labels, classes = list_image_folder(root, split, field)
  folder = indexed_files(paths, labels, len(classes), image_size, validate_files)
  if not folder.num_examples:
    raise DataError(f'config.data.{field}: no readable image in {os.path.join(root, split)}')
  return folder


# Cached, so that splits named by several fields are validated and held once.
@functools.lru_cache(maxsize=8)
def indexed_files(paths, labels, num_classes: int, image_size: int,
                  validate_files: bool) -> Split:
  if validate_files:
    paths, labels = _drop_unreadable(paths, labels, image_size)
  num_examples = len(paths)
  paths, labels = tf.constant(paths, tf.string), tf.constant(labels, tf.int32)
  read = lambda i: {'image': tf.io.read_file(tf.gather(paths, i)),
                    'label': tf.gather(labels, i)}
  return indexed_split(num_examples, num_classes, read)


def list_image_folder(root: str, split: str, field: str):
  """Sorted image paths, their labels and the class names of root/<split>."""
  if not root:
    raise DataError("config.data.root: empty; set it to a folder with "
                    "<split>/<class>/*.jpg|png, or use config.data.source='synthetic'")
  if not tf.io.gfile.isdir(root):
    raise DataError(f'config.data.root: directory {root} does not exist')
  split_dir = os.path.join(root, split)
  if not tf.io.gfile.isdir(split_dir):
    raise DataError(f'config.data.{field}: directory {split_dir} does not exist')
  classes = sorted(c.rstrip('/') for c in tf.io.gfile.listdir(split_dir)
                   if tf.io.gfile.isdir(os.path.join(split_dir, c)))
  if not classes:
    raise DataError(f'config.data.{field}: {split_dir} has no class folders '
                    '(expected <split>/<class>/*.jpg|png)')
  paths, labels = [], []
  for label, name in enumerate(classes):
    class_dir = os.path.join(split_dir, name)
    files = sorted(f for f in tf.io.gfile.listdir(class_dir)
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
      raise DataError(f'config.data.{field}: class folder {class_dir} has no '
                      f'{"/".join(IMAGE_EXTENSIONS)} files')
    paths += [os.path.join(class_dir, f) for f in files]
    labels += [label] * len(files)
  return tuple(paths), tuple(labels), tuple(classes)


def _image_size_or_none(path: str):
  """(width, height) from the file's header, or None if it is not a JPEG/PNG image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with tf.io.gfile.GFile(path, 'rb') as f, Image.open(f) as image:
      return image.size if image.format in _FOLDER_FORMATS else None
  except Exception:  # pylint: disable=broad-except
    return None


def _drop_unreadable(paths, labels, image_size: int):
  """Drops files whose header is not a JPEG/PNG image, warning with a count.

  Reads headers only (no decoding). Images smaller than the crop are kept and upsampled,
  as torchvision does, with a warning.
  """
  with concurrent.futures.ThreadPoolExecutor(32) as pool:
    sizes = list(pool.map(_image_size_or_none, paths))
  bad = [p for p, s in zip(paths, sizes) if s is None]
  small = [p for p, s in zip(paths, sizes) if s is not None and min(s) < image_size]
  if bad:
    logging.warning('Skipping %d of %d files that are not readable JPEG/PNG images, '
                    'e.g. %s', len(bad), len(paths), ', '.join(bad[:3]))
  if small:
    logging.warning('%d images are smaller than the crop (config.data.image_size=%d) and '
                    'will be upsampled, e.g. %s', len(small), image_size,
                    ', '.join(small[:3]))
  keep = [s is not None for s in sizes]
  return ([p for p, k in zip(paths, keep) if k], [l for l, k in zip(labels, keep) if k])


# ---------------------------------------------------------------------------------------
# TensorFlow Datasets.


@functools.lru_cache(maxsize=8)
def tfds_split(name: str, split: str, data_dir, shuffle_buffer: int, field: str) -> Split:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f'config.data.tfds_name: unknown TFDS dataset {name!r}') from e
  try:
    num_examples = builder.info.splits[split].num_examples
  except (KeyError, ValueError) as e:
    if not builder.is_prepared():
      raise DataError(f'config.data.data_dir: TFDS dataset {name} is not prepared in '
                      f'{builder.data_dir} (run `tfds build {name} --data_dir=...` '
                      'first)') from e
    raise DataError(f'config.data.{field}: {name} has no split {split!r} '
                    f'(it has {sorted(builder.info.splits)})') from e
  features = builder.info.features
  label = features['label'] if 'label' in features.keys() else None
  num_classes = label.num_classes if label is not None else 0

  decoders = {'image': tfds.decode.SkipDecoding()}
  per_epoch_file_order = builder.info.file_format == tfds.core.FileFormat.TFRECORD
  if not per_epoch_file_order:
    logging.warning('TFDS dataset %s is stored as %s: its files are read in the same order '
                    'every epoch, shuffled within a buffer of %d only.', name,
                    builder.info.file_format, shuffle_buffer)

  def keys(process_index, process_count, shuffle_seed=None):
    process_split = tfds.split_for_jax_process(
        split, process_index=process_index, process_count=process_count)
    if shuffle_seed is None or not per_epoch_file_order:
      # Records stay encoded, so that skipping them is cheap and JPEGs are decoded cropped.
      records = builder.as_dataset(split=process_split, shuffle_files=False, decoders=decoders)
    else:
      records = _records_in_shuffled_file_order(
          builder, process_split, shuffle_seed,
          lambda record: builder.info.features.deserialize_example(record, decoders=decoders))
    if shuffle_seed is None:
      return records
    seed = tf.random.stateless_uniform([], shuffle_seed, minval=0, maxval=2**62,
                                       dtype=tf.int64)
    return records.shuffle(shuffle_buffer, seed=seed)

  def read(record):
    return {'image': record['image'],
            'label': tf.cast(record['label'], tf.int32) if label is not None else -1}

  return Split(num_examples, num_classes, keys, read)


def _records_in_shuffled_file_order(builder, split, shuffle_seed, parse) -> tf.data.Dataset:
  """The split's records with its files in an order drawn from `shuffle_seed` ((seed,
  epoch) in the pipeline), interleaved 16 at a time: each epoch sees the whole set in a new
  order (within the shuffle buffer that follows), as the official sampler's permutation
  does, and the order is a pure function of the seed, so a resumed run reads what an
  uninterrupted one reads."""
  files = builder.info.splits[split].file_instructions
  order = tf.random.experimental.stateless_shuffle(tf.range(len(files), dtype=tf.int64),
                                                   shuffle_seed)
  columns = [tf.gather(tf.constant(values, dtype), order) for values, dtype in (
      ([f.filename for f in files], tf.string), ([f.skip for f in files], tf.int64),
      ([f.take for f in files], tf.int64))]
  return tf.data.Dataset.from_tensor_slices(tuple(columns)).interleave(
      lambda filename, skip, take: tf.data.TFRecordDataset(filename).skip(skip).take(take),
      cycle_length=min(len(files), 16)).map(parse)  # Sequential, hence deterministic.
