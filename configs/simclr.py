"""SimCLR ResNet-50 on ImageNet, 100 epochs: the SimCLR row of the paper's Table 4.

Run (one host; multi-host: launch/ with CONFIG=configs/simclr.py):
  python -m simsiam_jax.main --config=configs/simclr.py --workdir=/tmp/simclr_in1k \
      --config.data.data_dir=gs://YOUR_BUCKET/tensorflow_datasets

Recipe of google-research/simclr for ImageNet (README, run.py flags): batch 4096, its LARS
(lars_optimizer.py: trust 0.001, the lr inside the momentum; no decay and no trust ratio on
biases and BatchNorm), lr 0.3 * 4096/256 = 4.8
after 10 warmup epochs, cosine per step, weight decay 1e-6, NT-Xent temperature 0.1 over the
whole global batch, 2-layer projector 2048-128 with BatchNorm. What differs from simclr
(methods/simclr.py): MoCo v2's augmentations of this codebase (crop scale 0.2-1, blur
p=0.5) for every method, so that only the method changes; the projector's last BatchNorm has
no scale; the linear evaluation is SimSiam's (configs/imagenet_linear.py).
Expected result (paper Table 4, 100 epochs): 66.5% linear top-1. Expected time: not measured;
batch 4096 needs a pod slice (a v4-32 or 32 A100s).
"""

from configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.method = 'simclr'
  config.model.projector_hidden_dim = 2048
  config.model.projector_dim = 128
  imagenet.use_batch_4096(config, base_lr=0.3, optimizer='simclr_lars')
  config.simclr.temperature = 0.1
  return config
