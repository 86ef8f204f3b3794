"""Host input pipeline: two augmented uint8 views per image, sharded over processes.

Determinism: epoch e visits this process's shard in an order drawn from (config.seed, e),
and the example in slot s of the global batch stream (s = step * batch_size + position)
is augmented with seed (config.seed, s). Both are pure functions of the step, so
`create_pretrain_iterator(config, start_step=k)` yields exactly what an uninterrupted
iterator yields from step k on, and reaches step k by skipping keys (indices or encoded
records), not images.
"""

import collections
import itertools
import logging
import math
import os
from typing import Callable, Iterator

import jax
import tensorflow as tf

from simsiam_jax import losses, sharding
from simsiam_jax.data import DataError, augmentations, datasets, resolved_augment_on

# The host pipeline must leave accelerators to JAX.
try:
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')
except RuntimeError:  # TensorFlow ran before this import; too late to hide them.
  logging.warning('TensorFlow was initialized before simsiam_jax.data.input_pipeline was '
                  'imported and may hold accelerator memory; import it first.')


def _processes(process_index, process_count):
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  return process_index, process_count


def local_batch_size(batch_size: int, process_count: int, field: str = 'batch_size') -> int:
  if batch_size % process_count:
    raise DataError(f'config.{field}={batch_size} is not divisible by the '
                    f'{process_count} processes')
  return batch_size // process_count


def _options(config) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = True
  options.threading.private_threadpool_size = config.data.host_threads or os.cpu_count()
  # Parallelism comes from processing many images at once, not from splitting one op.
  options.threading.max_intra_op_parallelism = 1
  return options


def decoding(data_config) -> augmentations.Decoding:
  return augmentations.Decoding(antialias=data_config.resize_antialias,
                                dct_method=data_config.jpeg_dct_method)


def load_split(config, field: str) -> datasets.Split:
  return datasets.load_split(config.data, field)


def num_pretrain_examples(config) -> int:
  """Examples in the global pretraining split, counted from it (steps per epoch = this //
  batch_size); a config that declares the count (config.data.train_examples) must agree."""
  counted = load_split(config, 'train_split').num_examples
  declared = config.data.get('train_examples')
  if declared is not None and declared != counted:
    raise DataError(f'config.data.train_examples={declared}, but config.data.train_split '
                    f'has {counted} examples: set --config.data.train_examples={counted}')
  return counted


def declared_pretrain_examples(config) -> int:
  """The pretraining split's size without reading it where the config declares it
  (config.data.train_examples), else counted from the split."""
  declared = config.data.get('train_examples')
  return declared if declared is not None else num_pretrain_examples(config)


def pretrain_steps_per_epoch(config) -> int:
  """Global batches per pass over the pretraining split (the remainder is dropped)."""
  return steps_per_epoch(num_pretrain_examples(config), config.batch_size)


def steps_per_epoch(num_pretrain_examples: int, batch_size: int) -> int:
  """pretrain_steps_per_epoch for a split size the caller already has."""
  if num_pretrain_examples < batch_size:
    raise DataError(f'config.batch_size={batch_size} is larger than the '
                    f'{num_pretrain_examples} examples of config.data.train_split')
  return num_pretrain_examples // batch_size


def num_classes(config) -> int:
  """Classes of the labeled evaluation splits."""
  return load_split(config, 'eval_train_split').num_classes


def _traced_as_written(fn: Callable) -> Callable:
  """`fn` for tf.data's map without AutoGraph's rewrite of its Python: the augmentations
  branch with tf.cond and loop over Python values only, so the graph is the same, and the
  rewrite doubled the time to a pipeline's first batch (3.94 s against 1.87 s,
  BENCHMARKS.md)."""
  return tf.autograph.experimental.do_not_convert(fn)


def _augmented_stream(config, split: datasets.Split, batch_size: int, augment: Callable, *,
                      batch_field: str, split_field: str, start_step: int, process_index,
                      process_count, keep_last_partial_batch: bool = False) -> Iterator[dict]:
  """This process's share of every global batch of `split` from `start_step` on, forever.

  `augment(example, seed)` makes one example's output dict; its seed depends only on
  (config.seed, the example's slot in the global stream), whatever the process layout, and
  so does the example in each slot for the indexed sources (datasets.indexed_split). Each
  epoch drops the examples of its last partial batch, as the official pretraining's loader
  does (drop_last), or with `keep_last_partial_batch` keeps them in a last batch padded to
  full size (as main_lincls.py's loader keeps them): the output's 'mask' is False on the
  padding, copies of an example of the split.
  """
  local_batch = local_batch_size(batch_size, process_count, batch_field)
  steps_per_epoch = (math.ceil if keep_last_partial_batch else math.floor)(
      split.num_examples / batch_size)
  if not steps_per_epoch:
    raise DataError(f'config.{batch_field}={batch_size} is larger than the '
                    f'{split.num_examples} examples of config.data.{split_field}')
  start_epoch, start_offset = divmod(start_step, steps_per_epoch)

  def epoch_keys(epoch):
    shuffle_seed = tf.stack([tf.constant(config.seed, tf.int64), epoch])
    keys = split.keys(process_index, process_count, shuffle_seed, block=local_batch)
    marked = keys.map(lambda key: (key, True))
    if keep_last_partial_batch:
      # This process's share of an epoch is at most steps_per_epoch * local_batch examples.
      marked = marked.concatenate(keys.take(1).map(lambda key: (key, False)).repeat())
    return marked.take(steps_per_epoch * local_batch)

  def augmented(position, marked_key):
    key, real = marked_key
    step = position // local_batch
    slot = step * batch_size + process_index * local_batch + position % local_batch
    output = augment(split.read(key), tf.stack([tf.constant(config.seed, tf.int64), slot]))
    return {**output, 'mask': real} if keep_last_partial_batch else output

  ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_keys)
  ds = ds.skip(start_offset * local_batch).enumerate(start=start_step * local_batch)
  ds = ds.map(_traced_as_written(augmented), num_parallel_calls=tf.data.AUTOTUNE)
  # Files that pass the header check but fail to decode are dropped, not fatal.
  ds = ds.ignore_errors(log_warning=True)
  ds = ds.batch(local_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return iter(ds.with_options(_options(config)).as_numpy_iterator())


def augment_on(config) -> str:
  """'host' or 'device': where this process's runs augment, the pipeline and the train step
  alike (config.data.augment_on, 'auto' resolved for its platform)."""
  return resolved_augment_on(config.data.augment_on, jax.default_backend())


def create_pretrain_iterator(config, *, start_step: int = 0, process_index=None,
                             process_count=None) -> Iterator[dict]:
  """This process's share of every global pretraining batch from `start_step` on, forever.

  Yields {'view1', 'view2'}: uint8 numpy arrays [batch_size // process_count, H, W, 3]
  (and 'view3', 'view4' for two pairs per image), with 'index': int32, each image's
  position in the split (for per-image state such as a memory bank), where the source
  has one. With config.data.augment_on='device' the views are the crops, which the train
  step augments.
  """
  process_index, process_count = _processes(process_index, process_count)

  num_pairs = losses.num_view_pairs(config.loss_symmetry)
  on_host = augment_on(config) == 'host'

  def view_pairs(example, seed):
    views = {}
    for pair in range(num_pairs):
      pair_seed = tf.random.experimental.stateless_fold_in(seed, pair) if pair else seed
      views[f'view{2 * pair + 1}'], views[f'view{2 * pair + 2}'] = augmentations.two_views(
          example['image'], pair_seed, config.aug, config.data.image_size,
          decoding(config.data), augment=on_host)
    if 'index' in example:
      views['index'] = tf.cast(example['index'], tf.int32)
    return views

  return _augmented_stream(config, load_split(config, 'train_split'), config.batch_size,
                           view_pairs, batch_field='batch_size', split_field='train_split',
                           start_step=start_step, process_index=process_index,
                           process_count=process_count)


def num_linear_train_examples(config) -> int:
  """Examples the linear classifier trains on (config.data.eval_train_split)."""
  return load_split(config, 'eval_train_split').num_examples


def linear_steps_per_epoch(config) -> int:
  """Batches of config.linear.batch_size per epoch of the linear classifier's training,
  the last one partial (padded) where the split does not divide."""
  return math.ceil(num_linear_train_examples(config) / config.linear.batch_size)


def create_linear_train_iterator(config, *, start_step: int = 0, process_index=None,
                                 process_count=None) -> Iterator[dict]:
  """Labeled RandomResizedCrop + flip views of config.data.eval_train_split, forever.

  Yields {'image': uint8 [linear.batch_size // process_count, H, W, 3], 'label': int32,
  'mask': bool}, the batch form of `create_eval_iterators`: every image of the split each
  epoch, the last batch padded (mask False), as main_lincls.py's loader keeps it.
  """
  process_index, process_count = _processes(process_index, process_count)

  def labeled_view(example, seed):
    image = augmentations.crop_and_flip_view(example['image'], seed, config.linear.crop_scale,
                                             config.aug.crop_ratio, config.data.image_size,
                                             decoding=decoding(config.data))
    return {'image': image, 'label': tf.cast(example['label'], tf.int32)}

  return _augmented_stream(config, load_split(config, 'eval_train_split'),
                           config.linear.batch_size, labeled_view,
                           batch_field='linear.batch_size', split_field='eval_train_split',
                           start_step=start_step, process_index=process_index,
                           process_count=process_count, keep_last_partial_batch=True)


def _eval_dataset(config, split: datasets.Split, process_index, process_count):
  """The split once, un-augmented, padded with mask=False to the same batch count on
  every process."""
  local_batch = local_batch_size(config.batch_size, process_count)
  num_batches = math.ceil(math.ceil(split.num_examples / process_count) / local_batch)

  def center_view(key):
    example = split.read(key)
    return {'image': augmentations.center_view(example['image'], config.data.image_size,
                                               config.data.eval_crop_fraction,
                                               decoding(config.data)),
            'label': tf.cast(example['label'], tf.int32),
            'mask': tf.constant(True)}

  size = config.data.image_size
  padding = {'image': tf.zeros([size, size, 3], tf.uint8), 'label': tf.constant(-1),
             'mask': tf.constant(False)}
  ds = split.keys(process_index, process_count)
  ds = ds.map(_traced_as_written(center_view),
              num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(log_warning=True)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat())
  ds = ds.take(num_batches * local_batch).batch(local_batch).prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options(config))


def labeled_eval_splits(config) -> tuple[datasets.Split, datasets.Split]:
  """(config.data.eval_train_split, config.data.eval_split), checked to be labeled with the
  same classes, at least two: label i must name the same class in both."""
  train, test = (load_split(config, field) for field in ('eval_train_split', 'eval_split'))
  if train.num_classes < 2:
    raise DataError(f'config.data.eval_train_split: {config.data.eval_train_split!r} has '
                    f'{train.num_classes} labeled class(es); kNN and linear evaluation need '
                    'at least 2')
  if test.class_names != train.class_names:
    extra = sorted(set(test.class_names) - set(train.class_names))
    missing = sorted(set(train.class_names) - set(test.class_names))
    raise DataError(
        f'config.data.eval_split: the classes of {config.data.eval_split!r} differ from those '
        f'of config.data.eval_train_split {config.data.eval_train_split!r}' +
        (f'; not in {config.data.eval_train_split!r}: {", ".join(extra[:5])}' if extra else '') +
        (f'; missing: {", ".join(missing[:5])}' if missing else ''))
  return train, test


def create_eval_iterators(config, *, process_index=None, process_count=None
                          ) -> tuple[Callable[[], Iterator[dict]],
                                     Callable[[], Iterator[dict]]]:
  """(train_iter_fn, eval_iter_fn): each call returns a fresh pass over its split.

  Batches are {'image': uint8 [B_local, H, W, 3], 'label': int32 [B_local],
  'mask': bool [B_local]}, mask=False on padding. The splits are config.data.
  eval_train_split (features for kNN / the linear classifier) and config.data.eval_split.
  """
  process_index, process_count = _processes(process_index, process_count)
  train, test = labeled_eval_splits(config)

  def iter_fn(split):
    ds = _eval_dataset(config, split, process_index, process_count)
    return lambda: iter(ds.as_numpy_iterator())

  return iter_fn(train), iter_fn(test)


def prefetch_to_mesh(iterator: Iterator[dict], mesh, size: int = 2):
  """Global batch-sharded jax.Arrays from local numpy batches, `size` transfers ahead."""
  queue = collections.deque()

  def enqueue(n):
    for batch in itertools.islice(iterator, n):
      queue.append(sharding.global_batch_from_local(batch, mesh))

  enqueue(size)
  while queue:
    yield queue.popleft()
    enqueue(1)
