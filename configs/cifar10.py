"""SimSiam ResNet-18 (CIFAR variant) on CIFAR-10, the paper's recipe (Sec. 5, App. D).

Run:
  python -m simsiam_jax.main --config=configs/cifar10.py --workdir=/tmp/simsiam_cifar10
Or on a local image folder (root/{train,test}/<class>/*.jpg):
  python -m simsiam_jax.main --config=configs/cifar10.py --workdir=/tmp/simsiam_cifar10 \
      --config.data.source=folder --config.data.root=../shared/data/cifar10

Batch 512, SGD lr 0.03 * 512/256 = 0.06 (cosine), wd 5e-4, 2-layer projector, no blur,
800 epochs. Expected result (paper Fig. D.1): about 91.8% kNN / linear top-1.
Expected time: a few hours on one modern GPU. Not practical on a CPU: see cifar10_cpu.py.
"""

from configs import base


def get_config():
  config = base.get_base_config()
  config.model.name = 'resnet18'
  config.model.cifar_stem = True
  config.model.projector_layers = 2
  config.model.projector_hidden_dim = 2048
  config.model.projector_dim = 2048
  config.model.predictor_hidden_dim = 512
  config.data.source = 'tfds'
  config.data.tfds_name = 'cifar10'
  config.data.image_size = 32
  config.data.eval_crop_fraction = 1.0  # Whole 32px images for kNN and linear eval.
  config.data.mean = (0.4914, 0.4822, 0.4465)
  config.data.std = (0.2470, 0.2435, 0.2616)
  config.aug.blur_prob = 0.0
  # An accelerator's recipe: on GPUs the host only decodes and crops (configs/imagenet.py
  # says why).
  config.data.augment_on = 'auto'
  config.batch_size = 512
  config.num_epochs = 800
  config.optim.base_lr = 0.03
  config.optim.weight_decay = 5e-4
  # The other methods (--config.method=...) at CIFAR scale: a queue of 4,096 keys as in
  # MoCo's CIFAR-10 demo, BYOL's tau_base for short runs.
  config.moco_v2.queue_size = 4096
  config.byol.tau_base = 0.99
  return config
