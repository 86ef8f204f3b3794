"""A pretrained encoder for a JAX user's own images, in three lines:

  from simsiam_jax import load_encoder
  encoder = load_encoder('/tmp/simsiam_default')  # A pretraining or an imported run.
  features = encoder(images)  # uint8 [N, H, W, 3] -> float32 [N, encoder.feature_dim]

The encoder is the run's network as its config and latest checkpoint describe it, with
BatchNorm in inference mode (its running statistics), as kNN and linear evaluation read it.
It runs on every local device, the batch split over them, jit-compiled once per input shape.
No TensorFlow is imported: this needs only JAX, flax and orbax.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from simsiam_jax import checkpointing, config_validation, methods, sharding
from simsiam_jax.data import preprocess

# What an encoder returns: the backbone's pooled features (the representation the paper
# evaluates) or the projector's output z.
OUTPUTS = ('backbone', 'projector')


class Encoder:
  """encoder(images) -> float32 [N, feature_dim] features of N images (a jax.Array).

  `images`: uint8 RGB [N, H, W, 3] (any H and W the network's stride allows), normalised on
  the device with the run's config.data.mean and std; or floats [N, H, W, 3] already
  normalised that way ((x / 255 - mean) / std per channel), used as they are.
  """

  def __init__(self, features_fn, variables, mesh, config: ml_collections.ConfigDict,
               output: str, feature_dim: int):
    self.config, self.output, self.feature_dim = config, output, feature_dim
    self._features, self._variables, self._mesh = features_fn, variables, mesh

  def __call__(self, images) -> jax.Array:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'images: expected [N, H, W, 3] RGB images, got shape {images.shape}')
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
      raise ValueError(f'images: expected uint8 pixels or normalised floats, not '
                       f'{images.dtype}')
    count = images.shape[0]
    # Padded to split evenly over the devices; the padding's rows are dropped.
    padding = -count % self._mesh.devices.size
    images = np.pad(images, ((0, padding), (0, 0), (0, 0), (0, 0)))
    return self._features(self._variables, images)[:count]


def load_encoder(workdir: str, *, output: str = 'backbone', dtype: Any = jnp.float32,
                 config: ml_collections.ConfigDict | None = None) -> Encoder:
  """The encoder of the latest checkpoint in `workdir` (`Encoder` says what it takes).

  output: 'backbone' (pooled features, the default) or 'projector' (z, the encoder f's
    output, which the loss compares).
  dtype: the precision it computes in (float32, linear evaluation's default; bfloat16 is
    faster on accelerators). The features come back as float32 either way.
  config: a config to build the network from instead of the one stored with the
    checkpoint; its model must be the checkpoint's (a CheckpointError names the fields that
    differ).
  Raises CheckpointError when `workdir` has no readable checkpoint.
  """
  config_validation.require(output in OUTPUTS, 'output', output,
                            f'choose one of {", ".join(OUTPUTS)}')
  parts = ('backbone',) if output == 'backbone' else ('backbone', 'projector')
  variables, stored_config = checkpointing.restore_pretrained_variables(workdir, config,
                                                                        parts=parts)
  config = (config or stored_config).copy_and_resolve_references()
  dtype = jnp.dtype(dtype)
  config.half_precision = dtype == jnp.bfloat16
  network = methods.get(config.get('method', checkpointing.STATE_FIELDS['method'])
                        ).create_network(config)
  mean, std = config.data.mean, config.data.std

  def features(variables, images):
    if images.dtype == jnp.uint8:
      images = preprocess.normalize_images(images, mean, std)
    outputs = network.apply(variables, images.astype(dtype), train=False,
                            method='features' if output == 'backbone' else 'encode')
    return outputs.astype(jnp.float32)

  mesh = sharding.create_mesh(jax.local_devices())
  features_fn = jax.jit(features, in_shardings=(sharding.replicated(mesh),
                                                sharding.batch_sharding(mesh)),
                        out_shardings=sharding.batch_sharding(mesh))
  feature_dim = (network.backbone.feature_dim if output == 'backbone' else
                 config.model.projector_dim)
  return Encoder(features_fn, jax.device_put(variables, sharding.replicated(mesh)), mesh, config,
                 output, feature_dim)
