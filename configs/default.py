"""Small offline SimSiam run on generated images: the first thing to run on a new machine.

Run:
  python -m simsiam_jax.main --config=configs/default.py --workdir=/tmp/simsiam_default

A ResNet-18 at 1/8 width (CIFAR stem) on 32x32 images of generated shapes (no download),
batch 128, 2-layer projector. Expected time: a few minutes on a 2-core CPU.
Expected result: the loss falls from about -0.3 towards -0.9 while z-std stays near
1/sqrt(256) = 0.0625 (no collapse).
"""

from configs import base


def get_config():
  config = base.get_base_config()
  config.model.name = 'resnet18'
  config.model.width = 8
  config.model.cifar_stem = True
  config.model.projector_layers = 2
  config.model.projector_hidden_dim = 256
  config.model.projector_dim = 256
  config.model.predictor_hidden_dim = 64
  config.data.source = 'synthetic'
  config.data.image_size = 32
  config.data.eval_crop_fraction = 1.0
  config.aug.blur_prob = 0.0
  config.batch_size = 128
  config.num_epochs = 4
  config.base_lr = 0.05
  config.log_every_steps = 4
  return config
