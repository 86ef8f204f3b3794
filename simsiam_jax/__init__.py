"""SimSiam in JAX/Flax."""

import contextlib
import os

from simsiam_jax import xla_flags

# Before JAX's backend can start: XLA reads XLA_FLAGS once (see xla_flags.py).
xla_flags.apply_cpu_defaults()


@contextlib.contextmanager
def _native_stderr_silenced():
  """Points file descriptor 2 at /dev/null; Python-level errors still raise afterwards."""
  saved = os.dup(2)
  with open(os.devnull, 'w') as devnull:
    os.dup2(devnull.fileno(), 2)
  try:
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


# TensorFlow (the input pipeline) prints oneDNN and CPU-feature notices from C++ while it
# loads, before any log level can apply; a user can do nothing about them. Importing it here,
# first, keeps them out of every command's log. SIMSIAM_VERBOSE_IMPORTS=1 shows them.
if os.environ.get('SIMSIAM_VERBOSE_IMPORTS') != '1':
  with _native_stderr_silenced():
    import tensorflow  # noqa: F401  pylint: disable=unused-import
