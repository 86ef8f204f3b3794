"""The SimSiam network: encoder f (backbone + projector) and predictor h."""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from simsiam_jax.models import heads, resnet


# model.predictor settings (paper Table 1): a trained MLP, none (p = z), or an MLP frozen
# at its random initialisation (the optimizer leaves it alone: see optimizer.py).
PREDICTORS = ('mlp', 'none', 'fixed_random')


class SimSiam(nn.Module):
  backbone: resnet.ResNet
  projector: heads.Projector
  predictor: heads.Predictor | None

  def encode(self, x, train: bool = True):
    return self.projector(self.backbone(x, train=train), train=train)

  def features(self, x, train: bool = False):
    """Backbone features, the representation evaluated by kNN and linear probes."""
    return self.backbone(x, train=train)

  def __call__(self, x1, x2, train: bool = True):
    # One encoder call per view, so BatchNorm normalises each view with its own batch
    # statistics, as the official code does.
    z1 = self.encode(x1, train)
    z2 = self.encode(x2, train)
    if self.predictor is None:
      p1, p2 = z1, z2
    else:
      p1, p2 = self.predictor(z1, train=train), self.predictor(z2, train=train)
    return {'z1': z1, 'z2': z2, 'p1': p1, 'p2': p2}


def create_model(model_config: ml_collections.ConfigDict, dtype: Any = jnp.float32) -> SimSiam:
  """The network with its backbone computing in `dtype`. The heads compute in float32 at
  least (float64 stays float64, for the parity tests): z is the other view's target and p
  is compared with it, and the heads are a small part of the step (0.3% of ResNet-50's
  FLOPs with the official dims), so bfloat16 would save little and round the targets."""
  head_dtype = jnp.promote_types(dtype, jnp.float32)
  backbone = resnet.create_backbone(model_config.name, width=model_config.width,
                                    cifar_stem=model_config.cifar_stem, dtype=dtype,
                                    remat=model_config.get('remat', 'none'))
  hidden_bn, projector_output_bn, predictor_output_bn = heads.HEAD_BATCH_NORM[
      model_config.head_batch_norm]
  projector = heads.Projector(num_layers=model_config.projector_layers,
                              hidden_dim=model_config.projector_hidden_dim,
                              output_dim=model_config.projector_dim, hidden_bn=hidden_bn,
                              output_bn=projector_output_bn, dtype=head_dtype)
  predictor = None if model_config.predictor == 'none' else heads.Predictor(
      hidden_dim=model_config.predictor_hidden_dim, output_dim=model_config.projector_dim,
      hidden_bn=hidden_bn, output_bn=predictor_output_bn, dtype=head_dtype)
  return SimSiam(backbone=backbone, projector=projector, predictor=predictor)
