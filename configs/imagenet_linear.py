"""Linear evaluation of a SimSiam ResNet-50 ImageNet checkpoint, the official recipe.

Run:
  python -m simsiam_jax.main --config=configs/imagenet_linear.py --workdir=/tmp/simsiam_lin \
      --config.pretrained_workdir=/tmp/simsiam_in1k \
      --config.data.data_dir=gs://YOUR_BUCKET/tensorflow_datasets
Fast mode (features of centre crops extracted once): add --config.linear.cached_features=True.

Frozen backbone (BatchNorm in inference mode), linear classifier N(0, 0.01) init, LARS,
batch 4096, lr 0.1 * 4096/256 = 1.6 cosine, 90 epochs, no weight decay; RandomResizedCrop
(0.08-1) + flip for train, resize 256 + centre crop 224 for validation.
Expected result (paper Table 4): 68.1% top-1 for the 100-epoch checkpoint.
Expected time: about half of the pretraining's per epoch (one view, no backward through the
backbone): on the order of a day on 8 GPUs, much less in the cached-features mode.
"""

from configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.mode = 'linear_eval'
  config.batch_size = 1024  # Batch of the feature extraction passes.
  return config
