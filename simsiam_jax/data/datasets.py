"""The three data sources: generated scenes, an image folder and TFDS.

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

from simsiam_jax.data import DataError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
# Formats the folder source decodes; anything else in the folder is skipped.
_FOLDER_FORMATS = ('JPEG', 'PNG')
_SYNTHETIC_SPLITS = {'train': 0, 'test': 1}
SYNTHETIC_NUM_CLASSES = 10
SYNTHETIC_CLASS_NAMES = tuple(f'scene{i}' for i in range(SYNTHETIC_NUM_CLASSES))


@dataclasses.dataclass(frozen=True)
class Split:
  num_examples: int
  # Label i names class_names[i]; empty for an unlabeled split.
  class_names: tuple[str, ...]
  # keys(process_index, process_count, shuffle_seed, block) -> tf.data.Dataset of keys;
  # the indexed sources deal the processes blocks of `block` consecutive keys of the global
  # order (the input pipeline passes its local batch), TFDS deals them files.
  keys: Callable[..., tf.data.Dataset]
  # read(key) -> {'image': string or uint8 [H, W, 3], 'label': int32}, and 'index' (int64,
  # the example's position in the split) where the source has one (not TFDS).
  read: Callable[..., dict]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def load_split(data_config, field: str) -> Split:
  """The split named by config.data.<field> of the source config.data.source."""
  split = data_config[field]
  if data_config.source == 'synthetic':
    if split not in _SYNTHETIC_SPLITS:
      raise DataError(f'config.data.{field}: the synthetic source has splits '
                      f'{sorted(_SYNTHETIC_SPLITS)}, not {split!r}')
    size_field = 'synthetic_train_examples' if split == 'train' else 'synthetic_eval_examples'
    return synthetic_split(split, data_config[size_field], data_config.image_size,
                           data_config.synthetic_seed)
  if data_config.source == 'folder':
    return folder_split(data_config.root, split, field, data_config.image_size,
                        data_config.validate_files)
  if data_config.source == 'tfds':
    return tfds_split(data_config.tfds_name, split, data_config.data_dir,
                      data_config.shuffle_buffer, field)
  raise DataError(f"config.data.source: unknown source {data_config.source!r}; "
                  "expected 'synthetic', 'folder' or 'tfds'")


def indexed_split(num_examples: int, class_names: tuple[str, ...], read) -> Split:
  """A split whose examples are read by index: one permutation of the whole split, dealt to
  the processes in blocks."""

  def keys(process_index, process_count, shuffle_seed=None, block=1):
    indices = tf.range(num_examples, dtype=tf.int64)
    if shuffle_seed is not None:
      indices = tf.random.experimental.stateless_shuffle(indices, shuffle_seed)
    # Dealt in blocks of `block` (the input pipeline's local batch): global batch b holds
    # the same examples in the same order for any number of processes, so a run on two
    # hosts trains on what a run on one host does.
    dealt_to = tf.range(num_examples, dtype=tf.int64) // block % process_count
    return tf.data.Dataset.from_tensor_slices(
        tf.boolean_mask(indices, tf.equal(dealt_to, process_index)))

  return Split(num_examples, class_names, keys, lambda index: {**read(index), 'index': index})


# ---------------------------------------------------------------------------------------
# Generated scenes.


@functools.lru_cache(maxsize=8)
def synthetic_split(split: str, num_examples: int, image_size: int, seed: int) -> Split:
  images, labels = render_scene_views(num_examples, image_size, seed, _SYNTHETIC_SPLITS[split])
  images, labels = tf.constant(images), tf.constant(labels)
  read = lambda i: {'image': tf.gather(images, i), 'label': tf.gather(labels, i)}
  return indexed_split(num_examples, SYNTHETIC_CLASS_NAMES, read)


def render_scenes(seed: int, size: int) -> np.ndarray:
  """The 10 scenes, float [10, size, size, 3] in [0, 1]: each a smooth random color field
  under 8 random discs and squares. Deterministic in `seed`."""
  rng = np.random.default_rng([seed, 1 << 20])
  grid = (np.arange(size, dtype=np.float32) + 0.5) / size
  xx, yy = grid[None, :], grid[:, None]
  scenes = []
  for _ in range(SYNTHETIC_NUM_CLASSES):
    field = np.zeros((size, size, 3), np.float32)
    for _ in range(6):
      fx, fy = rng.uniform(-4, 4, 2)
      wave = np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
      field += rng.uniform(-0.5, 0.5, 3) * wave[..., None]
    scene = 0.5 + field / 3
    for _ in range(8):
      cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.15)
      if rng.random() < 0.5:
        shape = (xx - cx)**2 + (yy - cy)**2 < r**2
      else:
        shape = np.maximum(abs(xx - cx), abs(yy - cy)) < r
      scene = np.where(shape[..., None], rng.uniform(0, 1, 3), scene)
    scenes.append(np.clip(scene, 0, 1))
  return np.stack(scenes)


def render_scene_views(num_examples: int, image_size: int, seed: int, stream: int):
  """Images of 10 classes, each class a scene (`render_scenes`) seen through a random
  window: 10-50% of its area, aspect 3/4-4/3, maybe mirrored, brightness and contrast
  scaled by 0.7-1.3, with pixel noise.

  Classes are what SimSiam's augmentations keep (a scene seen from a window) and images
  differ in what they remove (where the window is, its scale, the lighting): a random
  network's features follow the window more than the scene, and SimSiam, trained to match
  two views, learns to recognize scenes. Train and test show the same scenes through other
  windows. Deterministic in (seed, stream).
  Returns uint8 [n, size, size, 3] and int32 labels [n], classes balanced.
  """
  scene_size = 4 * image_size
  scenes = render_scenes(seed, scene_size)
  rng = np.random.default_rng([seed, stream])
  n = num_examples
  labels = rng.permutation(np.arange(n) % SYNTHETIC_NUM_CLASSES).astype(np.int32)
  area = rng.uniform(0.1, 0.5, n)
  aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3), n))
  width, height = np.sqrt(area * aspect), np.sqrt(area / aspect)
  left, top = rng.uniform(0, 1, n) * (1 - width), rng.uniform(0, 1, n) * (1 - height)
  t = (np.arange(image_size) + 0.5) / image_size
  columns = ((left[:, None] + width[:, None] * t) * scene_size).astype(int)
  rows = ((top[:, None] + height[:, None] * t) * scene_size).astype(int)
  mirrored = rng.random(n) < 0.5
  columns = np.where(mirrored[:, None], columns[:, ::-1], columns)
  brightness, contrast = rng.uniform(0.7, 1.3, (2, n, 1, 1, 1)).astype(np.float32)
  images = np.empty((n, image_size, image_size, 3), np.uint8)
  for chunk in np.array_split(np.arange(n), max(1, n * image_size**2 // 2**22)):
    view = scenes[labels[chunk, None, None], rows[chunk, :, None], columns[chunk, None, :]]
    mean = view.mean(axis=(1, 2, 3), keepdims=True)
    view = (view - mean) * contrast[chunk] + mean * brightness[chunk]
    view += 0.05 * (rng.random(view.shape, np.float32) - 0.5)
    images[chunk] = np.clip(view * 255 + 0.5, 0, 255).astype(np.uint8)
  return images, labels


# ---------------------------------------------------------------------------------------
# Image folder: root/<split>/<class>/*.jpg|jpeg|png.


def folder_split(root: str, split: str, field: str, image_size: int,
                 validate_files: bool) -> Split:
  paths, labels, classes = list_image_folder(root, split, field)
  folder = indexed_files(paths, labels, classes, image_size, validate_files)
  if not folder.num_examples:
    raise DataError(f'config.data.{field}: no readable image in {os.path.join(root, split)}')
  return folder


# Cached, so that splits named by several fields are validated and held once.
@functools.lru_cache(maxsize=8)
def indexed_files(paths, labels, class_names: tuple[str, ...], image_size: int,
                  validate_files: bool) -> Split:
  if validate_files:
    paths, labels = _drop_unreadable(paths, labels, image_size)
  num_examples = len(paths)
  paths, labels = tf.constant(paths, tf.string), tf.constant(labels, tf.int32)
  read = lambda i: {'image': tf.io.read_file(tf.gather(paths, i)),
                    'label': tf.gather(labels, i)}
  return indexed_split(num_examples, class_names, read)


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


# What a complete file ends with, within its last bytes (a few writers append data after
# JPEG's end-of-image marker).
_END_MARKERS = {'JPEG': b'\xff\xd9', 'PNG': b'IEND'}
_END_MARKER_WINDOW = 1024


def _image_size_or_none(path: str):
  """(width, height) from the file's header, or None if it is not a complete JPEG/PNG image:
  a foreign or damaged header, or no end marker (a truncated file). Decodes nothing."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with tf.io.gfile.GFile(path, 'rb') as f:
      with Image.open(f) as image:
        image_format, size = image.format, image.size
      if image_format not in _FOLDER_FORMATS:
        return None
      f.seek(max(f.size() - _END_MARKER_WINDOW, 0))
      return size if _END_MARKERS[image_format] in f.read() else None
  except Exception:  # pylint: disable=broad-except
    return None


def _drop_unreadable(paths, labels, image_size: int):
  """Drops files that are not complete JPEG/PNG images, warning with a count.

  Reads headers and end markers only (no decoding). Images smaller than the crop are kept
  and upsampled, as torchvision does, with a warning.
  """
  with concurrent.futures.ThreadPoolExecutor(32) as pool:
    sizes = list(pool.map(_image_size_or_none, paths))
  bad = [p for p, s in zip(paths, sizes) if s is None]
  small = [p for p, s in zip(paths, sizes) if s is not None and min(s) < image_size]
  if bad:
    logging.warning('Skipping %d of %d files that are not complete JPEG/PNG images (empty, '
                    'truncated or of another format), e.g. %s', len(bad), len(paths),
                    ', '.join(bad[:3]))
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
  class_names = tuple(label.names) if label is not None else ()

  decoders = {'image': tfds.decode.SkipDecoding()}
  per_epoch_file_order = builder.info.file_format == tfds.core.FileFormat.TFRECORD
  if not per_epoch_file_order:
    logging.warning('TFDS dataset %s is stored as %s: its files are read in the same order '
                    'every epoch, shuffled within a buffer of %d only.', name,
                    builder.info.file_format, shuffle_buffer)

  def keys(process_index, process_count, shuffle_seed=None, block=1):
    del block  # Each process reads its own files.
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

  return Split(num_examples, class_names, keys, read)


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
