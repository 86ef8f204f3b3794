"""SwAV ResNet-50 on ImageNet with two 224px views, 100 epochs: the SwAV row of the paper's
Table 4 (which uses SwAV without multi-crop).

Run (one host; multi-host: launch/ with CONFIG=configs/swav.py):
  python -m simsiam_jax.main --config=configs/swav.py --workdir=/tmp/swav_in1k \
      --config.data.data_dir=gs://YOUR_BUCKET/tensorflow_datasets

Recipe of facebookresearch/swav (scripts/swav_400ep_2x224_pretrain.sh): batch 4096, apex
LARC (trust 0.001, no clipping) around SGD on every parameter, biases and BatchNorm included,
lr 4.8 at batch 4096 (0.3 * 4096/256) after 10 warmup epochs, cosine, weight decay 1e-6,
3000 prototypes frozen for the first epoch (313 iterations), temperature 0.1, Sinkhorn
epsilon 0.05 with 3 iterations, projection head 2048-128. What differs (methods/swav.py):
warmup starts at 0, not 0.3, and the cosine ends at 0, not 0.0048 (main_swav.py's own
defaults, --start_warmup 0 and --final_lr 0); the freeze is given in epochs, so one epoch is
312 steps here, not 313; crops of scale 0.2-1 (the script uses 0.08-1) as for every method
here; BatchNorm statistics per view.
Expected result (paper Table 4, 100 epochs): 66.5% linear top-1. Expected time: not
measured; batch 4096 needs a pod slice (a v4-32 or 32 A100s).
"""

from configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.method = 'swav'
  config.model.projector_hidden_dim = 2048
  config.model.projector_dim = 128
  imagenet.use_batch_4096(config, base_lr=0.3, optimizer='larc')
  config.swav.num_prototypes = 3000
  config.swav.freeze_prototypes_epochs = 1.0
  return config
