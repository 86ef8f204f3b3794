"""Test session set-up: 8 fake CPU devices, so sharded code runs as on an 8-chip host."""

import os

# Must happen before jax is first imported anywhere in the session.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # noqa: E402

from helpers import make_tiny_config  # noqa: E402


@pytest.fixture
def tiny_config():
  return make_tiny_config()
