"""SimSiam ResNet-50 on ImageNet, the paper's 100-epoch recipe (Table 4/B.1).

Run (one host; multi-host: see launch/):
  python -m simsiam_jax.main --config=configs/imagenet.py --workdir=/tmp/simsiam_in1k \
      --config.data.data_dir=gs://YOUR_BUCKET/tensorflow_datasets

Batch 512, SGD lr 0.05 * 512/256 = 0.1 (cosine), wd 1e-4, momentum 0.9, fixed predictor lr.
Expected result (facebookresearch/simsiam README, 100 epochs): 68.1% linear top-1 at this
batch of 512; 68.3% at batch 256.
Expected time: about 25 h on 8 V100s in the paper; on a v3-8 TPU or 8 A100s on the order
of a day. Not yet measured with this code.
"""

from configs import base


def get_config():
  config = base.get_base_config()
  config.data.source = 'tfds'
  config.data.tfds_name = 'imagenet2012'
  config.data.train_split = 'train'
  config.data.eval_train_split = 'train'
  config.data.eval_split = 'validation'
  # ImageNet-1k's training images (the TFDS catalog's imagenet2012 train split): importing
  # an official checkpoint turns its epoch into a step without the data.
  config.data.train_examples = 1_281_167
  config.data.image_size = 224
  # On GPUs the host decodes and crops and jitter, grayscale, blur and flip run in the
  # train step: per image the host's CPU cost falls about 3.9x at 224 px, and an 8xH100
  # host's cores feed its GPUs only so. On TPUs the host does it all: a TPU host keeps up
  # either way, and the device ops would add 9% to the step's memory traffic (BENCHMARKS.md,
  # "Host or device augmentation"). The Table 4 configs inherit it.
  config.data.augment_on = 'auto'
  config.batch_size = 512
  config.num_epochs = 100
  config.optim.base_lr = 0.05
  config.optim.weight_decay = 1e-4
  config.half_precision = True
  return config


def use_batch_4096(config, base_lr: float, optimizer: str):
  """The large-batch recipe SimCLR, BYOL and SwAV share on ImageNet: batch 4096, each its
  own LARS `optimizer`, lr base_lr * 4096/256 after 10 warmup epochs, cosine per step, weight
  decay 1e-6."""
  config.batch_size = 4096
  config.optim.optimizer = optimizer
  config.optim.base_lr = base_lr
  config.optim.weight_decay = 1e-6
  config.optim.warmup_epochs = 10
  config.optim.lr_schedule = 'cosine'
