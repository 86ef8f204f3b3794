"""Test session set-up: 8 fake CPU devices, so sharded code runs as on an 8-chip host."""

import os

# Must happen before jax is first imported anywhere in the session.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # noqa: E402

from configs import default  # noqa: E402


def make_tiny_config():
  """The default config shrunk until a train step takes well under a second on a CPU."""
  config = default.get_config()
  config.model.width = 4
  config.model.projector_hidden_dim = 32
  config.model.projector_dim = 32
  config.model.predictor_hidden_dim = 8
  config.data.image_size = 16
  config.data.synthetic_train_examples = 64
  config.data.synthetic_eval_examples = 32
  config.batch_size = 16
  config.num_epochs = 2
  config.log_every_steps = 2
  config.evals.knn.every_epochs = 0
  return config


@pytest.fixture
def tiny_config():
  return make_tiny_config()
