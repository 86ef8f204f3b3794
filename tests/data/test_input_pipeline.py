"""Determinism, sharding, restart, evaluation batches and sources of the input pipeline."""

import itertools
import logging
import os

import jax
import numpy as np
import pytest
import tensorflow as tf

from configs import base
from helpers import REPO_ROOT
from simsiam_jax import sharding
from simsiam_jax.data import DataError, datasets, input_pipeline

CIFAR10 = os.path.join(REPO_ROOT, '..', 'shared', 'data', 'cifar10')


@pytest.fixture
def config():
  config = base.get_base_config()
  config.data.image_size = 32
  config.data.synthetic_train_examples = 96
  config.data.synthetic_eval_examples = 40
  config.data.eval_crop_fraction = 1.0
  config.aug.blur_prob = 0.5
  config.batch_size = 16  # 6 steps per epoch.
  return config


def identity_augmentation(config):
  """No-op augmentations, so that each view is its source image and identifies it."""
  config.aug.crop_scale = (1.0, 1.0)
  config.aug.crop_ratio = (1.0, 1.0)
  config.aug.color_jitter_prob = config.aug.grayscale_prob = 0.0
  config.aug.blur_prob = config.aug.flip_prob = 0.0
  return config


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def pretrain_batches(config, n, **kwargs):
  return take(input_pipeline.create_pretrain_iterator(config, **kwargs), n)


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def test_pretrain_batches_are_uint8_views_with_each_images_index(config):
  batch, = pretrain_batches(config, 1)
  assert set(batch) == {'view1', 'view2', 'index'}
  for view in (batch['view1'], batch['view2']):
    assert view.dtype == np.uint8 and view.shape == (16, 32, 32, 3)
  assert not np.array_equal(batch['view1'], batch['view2'])
  assert input_pipeline.num_pretrain_examples(config) == 96
  assert batch['index'].dtype == np.int32 and batch['index'].shape == (16,)


def test_indices_of_an_epoch_name_every_image_once_across_processes(config):
  """A memory bank row per image: the index is the image's, whichever process reads it."""
  config = identity_augmentation(config)
  config.data.image_size = 16
  images = datasets.render_scene_views(96, 16, config.data.synthetic_seed, 0)[0]
  indices = []
  for process in range(2):
    for batch in pretrain_batches(config, 6, process_index=process, process_count=2):
      indices += batch['index'].tolist()
      np.testing.assert_array_equal(batch['view1'], images[batch['index']])
  assert sorted(indices) == list(range(96))


def test_same_seed_same_batches_other_seed_different(config):
  first = pretrain_batches(config, 3)
  assert_same_batches(first, pretrain_batches(config, 3))
  config.seed = 1
  other = pretrain_batches(config, 3)
  assert not np.array_equal(first[0]['view1'], other[0]['view1'])


def test_start_step_resumes_exactly(config):
  # 6 steps per epoch: steps 4..8 cross into the second epoch.
  uninterrupted = pretrain_batches(config, 9)
  assert_same_batches(uninterrupted[4:], pretrain_batches(config, 5, start_step=4))
  assert_same_batches(uninterrupted[7:], pretrain_batches(config, 2, start_step=7))


def image_keys(images):
  return [image.tobytes() for image in images]


def test_processes_read_disjoint_shards_covering_the_split(config):
  config = identity_augmentation(config)
  config.data.synthetic_train_examples = 100  # 6 full steps; 4 examples left over.
  steps = input_pipeline.num_pretrain_examples(config) // config.batch_size
  seen = {}
  for process in (0, 1):
    batches = pretrain_batches(config, steps, process_index=process, process_count=2)
    assert all(b['view1'].shape[0] == 8 for b in batches)
    seen[process] = image_keys(np.concatenate([b['view1'] for b in batches]))
  assert not set(seen[0]) & set(seen[1])
  images, _ = datasets.render_scene_views(100, 32, config.data.synthetic_seed, 0)
  everything = set(image_keys(images))
  covered = set(seen[0]) | set(seen[1])
  assert covered <= everything and len(covered) == 96 == len(seen[0]) + len(seen[1])


@pytest.mark.parametrize('process_count', [2, 4])
def test_global_batches_do_not_depend_on_the_number_of_processes(config, process_count):
  """The processes' local batches, side by side, are the one-process run's global batches:
  the same images, in the same order, augmented the same way, over two epochs."""
  single = pretrain_batches(config, 12)
  shares = [pretrain_batches(config, 12, process_index=p, process_count=process_count)
            for p in range(process_count)]
  assert_same_batches([{k: np.concatenate([s[step][k] for s in shares]) for k in single[0]}
                       for step in range(12)], single)


def test_epochs_are_reshuffled(config):
  config = identity_augmentation(config)
  batches = pretrain_batches(config, 12)
  epochs = [image_keys(np.concatenate([b['view1'] for b in batches[e * 6:(e + 1) * 6]]))
            for e in (0, 1)]
  assert sorted(epochs[0]) == sorted(epochs[1]) and epochs[0] != epochs[1]


def eval_batches(config, **kwargs):
  train_fn, eval_fn = input_pipeline.create_eval_iterators(config, **kwargs)
  return list(train_fn()), list(eval_fn())


def test_eval_batches_cover_split_once_with_padding(config):
  images, labels = datasets.render_scene_views(40, 32, config.data.synthetic_seed, 1)
  per_process = {p: eval_batches(config, process_index=p, process_count=2)[1]
                 for p in (0, 1)}
  # 20 examples per process in batches of 8: 3 batches, the last padded with 4.
  assert [len(b) for b in per_process.values()] == [3, 3]
  seen_images, seen_labels = [], []
  for batches in per_process.values():
    for batch in batches:
      assert batch['image'].dtype == np.uint8 and batch['image'].shape == (8, 32, 32, 3)
      assert batch['label'].dtype == np.int32 and batch['mask'].dtype == bool
      seen_images += list(batch['image'][batch['mask']])
      seen_labels += list(batch['label'][batch['mask']])
    assert batches[-1]['mask'].sum() == 4 and not batches[-1]['mask'][-4:].any()
  assert sorted(image_keys(seen_images)) == sorted(image_keys(images))
  by_image = dict(zip(image_keys(images), labels))
  assert all(by_image[k] == l for k, l in zip(image_keys(seen_images), seen_labels))
  assert input_pipeline.num_classes(config) == 10


def test_eval_iterators_restart_and_train_split_is_pretraining_data(config):
  train_fn, _ = input_pipeline.create_eval_iterators(config, process_index=0,
                                                     process_count=1)
  first, second = list(train_fn()), list(train_fn())
  assert len(first) == 6 and sum(b['mask'].sum() for b in first) == 96
  np.testing.assert_array_equal(first[2]['image'], second[2]['image'])


def test_prefetch_to_mesh_assembles_sharded_global_batches(config):
  mesh = sharding.create_mesh()
  config.batch_size = 2 * len(jax.devices())
  local = pretrain_batches(config, 3, process_index=0, process_count=1)
  arrays = list(input_pipeline.prefetch_to_mesh(iter(local), mesh, size=2))
  assert len(arrays) == 3
  for array, batch in zip(arrays, local):
    assert isinstance(array['view1'], jax.Array)
    assert array['view1'].sharding == sharding.batch_sharding(mesh)
    np.testing.assert_array_equal(np.asarray(array['view2']), batch['view2'])


def test_synthetic_images_are_varied_and_deterministic():
  images, labels = datasets.render_scene_views(200, 32, 0, 0)
  assert images.dtype == np.uint8 and images.shape == (200, 32, 32, 3)
  assert np.bincount(labels).tolist() == [20] * 10
  assert len(set(image_keys(images))) == 200
  assert images.std(axis=(1, 2)).min() > 10  # No flat images.
  np.testing.assert_array_equal(images, datasets.render_scene_views(200, 32, 0, 0)[0])
  assert not np.array_equal(images, datasets.render_scene_views(200, 32, 1, 0)[0])


def test_synthetic_data_do_not_change_with_the_training_seed(config):
  images = {}
  for seed in (0, 1):
    config.seed = seed
    images[seed] = np.concatenate([b['image'] for b in eval_batches(config)[1]])
  np.testing.assert_array_equal(images[0], images[1])


def test_synthetic_splits_show_the_same_scenes_through_other_windows():
  """A test image's nearest training image in pixels (8x8 thumbnails) is mostly of its own
  class, never the same window, and a global color mean alone does not tell classes apart."""
  train, train_labels = datasets.render_scene_views(1000, 32, 0, 0)
  test, test_labels = datasets.render_scene_views(200, 32, 0, 1)
  assert not set(image_keys(train)) & set(image_keys(test))

  def nearest_neighbour_accuracy(cells):
    pool = lambda x: x.astype(np.float32).reshape(len(x), cells, 32 // cells, cells,
                                                   32 // cells, 3).mean((2, 4))
    a, b = pool(train).reshape(len(train), -1), pool(test).reshape(len(test), -1)
    distances = ((b[:, None] - a[None])**2).sum(-1)
    return (train_labels[distances.argmin(1)] == test_labels).mean()

  assert nearest_neighbour_accuracy(8) > 0.6
  assert nearest_neighbour_accuracy(1) < 0.5


# ---------------------------------------------------------------------------------------
# Image folders and bad input.


def write_folder(root, split='train', classes=('a', 'b'), per_class=4, size=24, fmt='png'):
  rng = np.random.default_rng(0)
  for name in classes:
    os.makedirs(os.path.join(root, split, name), exist_ok=True)
    for i in range(per_class):
      image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
      encoded = tf.io.encode_png(image) if fmt == 'png' else tf.io.encode_jpeg(image)
      tf.io.write_file(os.path.join(root, split, name, f'{i}.{fmt}'), encoded)


def folder_config(config, root):
  config.data.source = 'folder'
  config.data.root = str(root)
  config.data.eval_train_split = 'train'
  config.data.eval_split = 'train'
  config.batch_size = 4
  return config


def test_folder_source_reads_png_and_jpeg(config, tmp_path):
  write_folder(tmp_path, classes=('a', 'b'), fmt='png')
  write_folder(tmp_path, classes=('c',), fmt='jpg')
  config = folder_config(config, tmp_path)
  assert input_pipeline.num_pretrain_examples(config) == 12
  assert input_pipeline.num_classes(config) == 3
  batches = pretrain_batches(config, 4, process_index=0, process_count=1)
  assert all(b['view1'].shape == (4, 32, 32, 3) for b in batches)
  labels = np.concatenate([b['label'] for b in eval_batches(config)[0]])
  assert sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_missing_root_names_the_path(config, tmp_path):
  config = folder_config(config, tmp_path / 'nowhere')
  with pytest.raises(DataError, match=r'config\.data\.root.*nowhere'):
    input_pipeline.num_pretrain_examples(config)


def test_missing_split_names_the_field(config, tmp_path):
  write_folder(tmp_path, split='train')
  config = folder_config(config, tmp_path)
  config.data.eval_split = 'val'
  with pytest.raises(DataError, match=r'config\.data\.eval_split.*val'):
    input_pipeline.create_eval_iterators(config)


def test_empty_class_folder_names_the_folder(config, tmp_path):
  write_folder(tmp_path)
  os.makedirs(tmp_path / 'train' / 'empty')
  config = folder_config(config, tmp_path)
  with pytest.raises(DataError, match=r'train/empty'):
    input_pipeline.num_pretrain_examples(config)


def test_corrupt_empty_truncated_and_non_image_files_are_skipped_with_a_count(
    config, tmp_path, caplog):
  write_folder(tmp_path, per_class=4, fmt='jpg')
  (tmp_path / 'train' / 'a' / 'junk.jpg').write_bytes(b'not an image at all')
  (tmp_path / 'train' / 'b' / 'text.png').write_text('hello')
  (tmp_path / 'train' / 'b' / 'empty.jpg').write_bytes(b'')
  whole = (tmp_path / 'train' / 'a' / '0.jpg').read_bytes()
  (tmp_path / 'train' / 'a' / 'cut.jpg').write_bytes(whole[:len(whole) // 2])
  config = folder_config(config, tmp_path)
  with caplog.at_level(logging.WARNING):
    assert input_pipeline.num_pretrain_examples(config) == 8
  assert 'Skipping 4 of 12 files' in caplog.text and 'junk.jpg' in caplog.text
  # Two full epochs run without error.
  assert len(pretrain_batches(config, 4, process_index=0, process_count=1)) == 4


def test_without_validation_a_truncated_jpeg_does_not_stop_the_epoch(config, tmp_path):
  write_folder(tmp_path, per_class=4, size=64, fmt='jpg')
  path = tmp_path / 'train' / 'a' / '0.jpg'
  path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])
  config = folder_config(config, tmp_path)
  config.data.validate_files = False
  assert input_pipeline.num_pretrain_examples(config) == 8
  assert len(pretrain_batches(config, 4, process_index=0, process_count=1)) == 4


def test_images_smaller_than_the_crop_are_upsampled_with_a_warning(config, tmp_path,
                                                                    caplog):
  write_folder(tmp_path, size=16)
  config = folder_config(config, tmp_path)
  with caplog.at_level(logging.WARNING):
    batch, = pretrain_batches(config, 1, process_index=0, process_count=1)
  assert batch['view1'].shape == (4, 32, 32, 3)
  assert '8 images are smaller than the crop (config.data.image_size=32)' in caplog.text


def test_unknown_tfds_name_names_the_field(config):
  config.data.source = 'tfds'
  config.data.tfds_name = 'no_such_dataset_xyz'
  with pytest.raises(DataError, match=r'config\.data\.tfds_name'):
    input_pipeline.num_pretrain_examples(config)


def test_unknown_source_names_the_field(config):
  config.data.source = 'webdataset'
  with pytest.raises(DataError, match=r'config\.data\.source'):
    input_pipeline.num_pretrain_examples(config)


@pytest.mark.skipif(not os.path.isdir(CIFAR10),
                    reason=f'no CIFAR-10 image folder at {os.path.normpath(CIFAR10)}')
def test_folder_source_reads_real_cifar10(config):
  config = folder_config(config, CIFAR10)
  config.data.train_split = config.data.eval_train_split = config.data.eval_split = 'test'
  config.batch_size = 256
  assert input_pipeline.num_pretrain_examples(config) == 10_000
  assert input_pipeline.num_classes(config) == 10
  batch, = pretrain_batches(config, 1, process_index=0, process_count=1)
  assert batch['view1'].shape == (256, 32, 32, 3)
  # Real photos: varied, and the two views of an image differ.
  assert batch['view1'].std() > 30
  assert not np.array_equal(batch['view1'], batch['view2'])
  _, test = eval_batches(config, process_index=0, process_count=1)
  labels = np.concatenate([b['label'][b['mask']] for b in test])
  assert np.bincount(labels).tolist() == [1000] * 10


# ---------------------------------------------------------------------------------------
# TFDS, on a tiny dataset prepared locally (TFDS cannot download here).


@pytest.fixture(scope='module')
def tfds_data_dir(tmp_path_factory):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class TinyShapes(tfds.core.GeneratorBasedBuilder):
    """30 train / 10 test generated images, stored as PNG like TFDS's cifar10."""
    VERSION = tfds.core.Version('1.0.0')

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          'image': tfds.features.Image(shape=(24, 24, 3)),
          'label': tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
      return {'train': self._generate_examples(30, 0), 'test': self._generate_examples(10, 1)}

    def _generate_examples(self, n, stream):
      images, labels = datasets.render_scene_views(n, 24, 0, stream)
      for i in range(n):
        yield i, {'image': images[i], 'label': labels[i]}

  data_dir = str(tmp_path_factory.mktemp('tfds'))
  # Several files per split, as real datasets have (imagenet2012's train split has 1,024).
  TinyShapes(data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=4))
  return data_dir


def tfds_config(config, data_dir):
  config.data.source = 'tfds'
  config.data.tfds_name = 'tiny_shapes'
  config.data.data_dir = data_dir
  config.data.eval_split = 'test'
  config.batch_size = 8
  return config


def test_tfds_source_shards_resumes_and_pads(config, tfds_data_dir):
  config = tfds_config(identity_augmentation(config), tfds_data_dir)
  assert input_pipeline.num_pretrain_examples(config) == 30
  assert input_pipeline.num_classes(config) == 10
  seen = []
  for process in (0, 1):
    batches = pretrain_batches(config, 5, process_index=process, process_count=2)
    assert_same_batches(batches[2:], pretrain_batches(
        config, 3, start_step=2, process_index=process, process_count=2))
    seen.append([image_keys(b['view1']) for b in batches])
  # 3 steps per epoch: the processes' shards are disjoint, and epoch 2 reshuffles.
  first_epoch = [sum(s[:3], []) for s in seen]
  assert not set(first_epoch[0]) & set(first_epoch[1])
  assert sum(seen[0][3:5], []) != first_epoch[0][:8]
  _, test = eval_batches(config, process_index=1, process_count=2)
  assert len(test) == 2 and sum(b['mask'].sum() for b in test) == 5


def test_tfds_files_are_reshuffled_every_epoch_and_a_resume_is_exact(config, tfds_data_dir):
  """Like the official sampler's permutation per epoch: with a shuffle buffer of 1 the order
  is the order of the files alone, which must change from epoch to epoch."""
  config = tfds_config(identity_augmentation(config), tfds_data_dir)
  config.data.shuffle_buffer = 1
  config.batch_size = 10  # 3 steps per epoch on one process.
  batches = pretrain_batches(config, 12, process_index=0, process_count=1)
  epochs = [image_keys(np.concatenate([b['view1'] for b in batches[3 * e:3 * e + 3]]))
            for e in range(4)]
  assert all(sorted(epoch) == sorted(epochs[0]) and len(set(epoch)) == 30 for epoch in epochs)
  assert len({tuple(epoch) for epoch in epochs}) > 1
  assert_same_batches(batches[4:], pretrain_batches(config, 8, start_step=4, process_index=0,
                                                    process_count=1))


def test_tfds_unknown_split_names_the_field(config, tfds_data_dir):
  config = tfds_config(config, tfds_data_dir)
  config.data.train_split = 'unlabelled'
  with pytest.raises(DataError, match=r'config\.data\.train_split'):
    input_pipeline.num_pretrain_examples(config)


def linear_epoch_images(config, process_index=0, process_count=1):
  """{image identity up to the flip: count} of the real images of one epoch of linear
  training batches, and the number of padding slots."""
  steps = input_pipeline.linear_steps_per_epoch(config)
  batches = take(input_pipeline.create_linear_train_iterator(
      config, process_index=process_index, process_count=process_count), steps + 1)
  seen, padding = {}, 0
  for batch in batches[:steps]:
    for image, real in zip(batch['image'], batch['mask']):
      if real:
        key = min(image.tobytes(), image[:, ::-1].tobytes())
        seen[key] = seen.get(key, 0) + 1
      else:
        padding += 1
  assert batches[steps]['mask'].all()  # The next epoch starts with a full batch.
  return seen, padding


def test_linear_training_sees_every_image_each_epoch_the_last_batch_padded(config):
  """96 images in batches of 40: 3 steps, the last with 16 images and 24 padding slots, as
  main_lincls.py's loader keeps the last partial batch; the same images on two processes."""
  config = identity_augmentation(config)
  config.linear.crop_scale = (1.0, 1.0)
  config.linear.batch_size = 40
  assert input_pipeline.linear_steps_per_epoch(config) == 3
  seen, padding = linear_epoch_images(config)
  assert sum(seen.values()) == len(seen) == 96 and padding == 3 * 40 - 96
  on_two = [linear_epoch_images(config, p, 2) for p in (0, 1)]
  assert sum(p for _, p in on_two) == padding
  assert sorted([*on_two[0][0], *on_two[1][0]]) == sorted(seen)
