"""load_encoder: a pretrained run's encoder for a JAX user's own images."""

import os
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from helpers import REPO_ROOT
from simsiam_jax import checkpointing, load_encoder, methods, sharding
from simsiam_jax.config_validation import ConfigError
from simsiam_jax.data import input_pipeline, preprocess
from simsiam_jax.evaluation import evaluators, features
from simsiam_jax.train_state import compute_dtype


@pytest.fixture(scope='module')
def eval_batch_and_knn_features(pretrained_workdir):
  """(the first evaluation batch of the pretrained run's data, its features as the kNN
  evaluator computes them, the run's config)."""
  config = checkpointing.restore_config(pretrained_workdir)
  config.pretrained_workdir = pretrained_workdir
  mesh = sharding.create_mesh()
  feature_fn = features.make_feature_fn(config.model, config.data, compute_dtype(config), mesh)
  _, eval_batches = input_pipeline.create_eval_iterators(config)
  batch = next(eval_batches())
  knn_features, _ = feature_fn(evaluators.restore_backbone(config, mesh),
                               sharding.global_batch_from_local(batch, mesh))
  return batch['image'], np.asarray(knn_features), config


def test_the_encoder_gives_the_knn_evaluators_features(pretrained_workdir,
                                                       eval_batch_and_knn_features):
  images, knn_features, config = eval_batch_and_knn_features
  encoder = load_encoder(pretrained_workdir)
  got = encoder(images)
  assert got.dtype == jnp.float32 and got.shape == (len(images), encoder.feature_dim)
  assert encoder.feature_dim == config.model.width * 8  # ResNet-18: 8 x the first stage.
  np.testing.assert_allclose(got, knn_features, rtol=1e-5, atol=1e-6)
  # A batch the 8 devices do not divide, and images already normalised as floats.
  np.testing.assert_allclose(encoder(images[:5]), knn_features[:5], rtol=1e-5, atol=1e-6)
  normalized = preprocess.normalize_images(images, config.data.mean, config.data.std)
  np.testing.assert_allclose(encoder(np.asarray(normalized)), knn_features, rtol=1e-5,
                             atol=1e-6)


def test_the_projector_output_is_the_projector_on_the_features(pretrained_workdir,
                                                                eval_batch_and_knn_features):
  images, knn_features, config = eval_batch_and_knn_features
  encoder = load_encoder(pretrained_workdir, output='projector')
  z = encoder(images)
  assert z.shape == (len(images), config.model.projector_dim) == (len(images),
                                                                  encoder.feature_dim)
  variables, _ = checkpointing.restore_pretrained_variables(pretrained_workdir,
                                                            parts=('projector',))
  projector = methods.get('simsiam').create_network(config).projector
  expected = projector.apply(
      {'params': variables['params']['projector'],
       'batch_stats': variables['batch_stats']['projector']}, knn_features, train=False)
  np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-5)


def test_bad_requests_name_what_is_wrong(tmp_path, pretrained_workdir):
  with pytest.raises(checkpointing.CheckpointError, match='No checkpoint'):
    load_encoder(str(tmp_path))
  with pytest.raises(ConfigError, match='output'):
    load_encoder(pretrained_workdir, output='predictor')
  other = checkpointing.restore_config(pretrained_workdir)
  other.model.width = 8
  with pytest.raises(checkpointing.CheckpointError, match=r'config\.model\.width: 4 -> 8'):
    load_encoder(pretrained_workdir, config=other)
  encoder = load_encoder(pretrained_workdir)
  with pytest.raises(ValueError, match='RGB'):
    encoder(np.zeros((2, 16, 16), np.uint8))


def readme_example() -> str:
  with open(os.path.join(REPO_ROOT, 'README.md')) as f:
    readme = f.read()
  return re.search(r'```python\n(.*?load_encoder.*?)```', readme, re.S).group(1)


def test_the_readme_example_runs_as_written_and_imports_no_tensorflow(pretrained_workdir):
  """The README's example on a pretrained workdir, in a fresh process: it loads no
  TensorFlow and redirects no file descriptor (the command-line tools silence TensorFlow's
  start-up notices; a library import must leave the user's stderr alone)."""
  example = readme_example().replace('/tmp/simsiam_default', pretrained_workdir)
  program = '\n'.join([
      'import os, sys', 'redirected = []', '_dup2 = os.dup2',
      'os.dup2 = lambda *a, **k: (redirected.append(a), _dup2(*a, **k))[1]',
      'import simsiam_jax',
      "assert 'tensorflow' not in sys.modules",
      example,
      "print('tensorflow loaded:', 'tensorflow' in sys.modules, 'redirected:', redirected)"])
  result = subprocess.run([sys.executable, '-c', program], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert '(8, 32) float32' in result.stdout  # The tiny run's ResNet-18 at width 4.
  assert 'tensorflow loaded: False redirected: []' in result.stdout
