"""MoCo v2 ResNet-50 on ImageNet, 100 epochs: the MoCo v2 row of the paper's Table 4.

Run (one host; multi-host: launch/ with CONFIG=configs/moco_v2.py):
  python -m simsiam_jax.main --config=configs/moco_v2.py --workdir=/tmp/moco_v2_in1k \
      --config.data.data_dir=gs://YOUR_BUCKET/tensorflow_datasets

Recipe of facebookresearch/moco (main_moco.py --mlp --moco-t 0.2 --aug-plus --cos): batch
256, SGD lr 0.03 * 256/256, momentum 0.9, weight decay 1e-4, cosine per epoch; key encoder
momentum 0.999, a queue of 65,536 keys, temperature 0.2, MLP head 2048-128 without
BatchNorm. What differs from the official code (methods/moco_v2.py): the loss is symmetric
(both views query the other's key; `--config.moco_v2.symmetric=False` is the original), and
BatchNorm statistics are the global batch's rather than shuffled per GPU.
Expected result (paper Table 4, 100 epochs): 67.4% linear top-1. Expected time: not
measured; about SimSiam's (configs/imagenet.py) at half its batch, plus the key encoder's
forward passes.
"""

from configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.method = 'moco_v2'
  config.model.projector_hidden_dim = 2048
  config.model.projector_dim = 128
  config.batch_size = 256
  config.optim.base_lr = 0.03
  config.optim.weight_decay = 1e-4
  config.moco_v2.momentum = 0.999
  config.moco_v2.queue_size = 65_536
  config.moco_v2.temperature = 0.2
  return config
