"""SimSiam in JAX/Flax.

A pretrained encoder in three lines (pretrained.py):

  from simsiam_jax import load_encoder
  encoder = load_encoder('/tmp/simsiam_default')
  features = encoder(images)  # uint8 [N, H, W, 3] -> float32 [N, d]

Importing the package loads neither TensorFlow (only the input pipeline, simsiam_jax.data,
does) nor JAX's backend.
"""

from simsiam_jax.scale import xla_flags

# Before JAX's backend can start: XLA reads XLA_FLAGS once (see scale/xla_flags.py).
xla_flags.apply_cpu_defaults()


def __getattr__(name):
  # Loaded on first use, so that `import simsiam_jax` stays light.
  if name == 'load_encoder':
    from simsiam_jax.pretrained import load_encoder  # pylint: disable=g-import-not-at-top
    return load_encoder
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
