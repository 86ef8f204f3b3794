"""BYOL ResNet-50 on ImageNet, 100 epochs: the BYOL row of the paper's Table 4.

Run (one host; multi-host: launch/ with CONFIG=configs/byol.py):
  python -m simsiam_jax.main --config=configs/byol.py --workdir=/tmp/byol_in1k \
      --config.data.data_dir=gs://YOUR_BUCKET/tensorflow_datasets

Recipe of deepmind-research/byol (configs/byol.py, its 100-epoch presets): batch 4096, its
LARS (utils/optimizers.py: trust 0.001, the lr after the momentum; no decay and no trust
ratio on biases and BatchNorm), lr 0.45 * 4096/256 after
10 warmup epochs, cosine per step, weight decay 1e-6, target decay tau from 0.99 to 1
(cosine), projector 4096-256 and predictor 4096-256 (Linear-BN-ReLU-Linear). What differs
(methods/byol.py): MoCo v2's augmentations of this codebase instead of BYOL's asymmetric
ones, for every method alike.
Expected result (paper Table 4, 100 epochs): 66.5% linear top-1. Expected time: not
measured; batch 4096 needs a pod slice (a v4-32 or 32 A100s).
"""

from configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.method = 'byol'
  config.model.projector_hidden_dim = 4096
  config.model.projector_dim = 256
  config.model.predictor_hidden_dim = 4096
  imagenet.use_batch_4096(config, base_lr=0.45, optimizer='byol_lars')
  config.byol.tau_base = 0.99
  return config
