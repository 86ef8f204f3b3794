"""Smoke run of the ImageNet model on one accelerator: a few steps of ResNet-50 in bfloat16.

Run (a GPU or TPU host; generated images, nothing to download):
  python -m simsiam_jax.main --config=configs/gpu_smoke.py --workdir=/tmp/simsiam_gpu_smoke

ResNet-50 with the official heads at 224 px in bfloat16 (configs/imagenet.py's model and
precision) on the project's generated images: 2 epochs of 8 steps at batch 64, checkpoints
every 4 steps, kNN top-1 on 256 generated test images at epochs 0, 1 and 2.
tests/test_accelerator.py runs it, checks that the loss is finite and falls, restores the
checkpoint and resumes, and `.ci/accelerator` runs those tests and benchmarks/train_step.py.
Expected time: about a minute on one GPU, most of it compiling; not for CPUs (a ResNet-50
step at 224 px takes minutes there).
"""

from configs import imagenet


def get_config():
  config = imagenet.get_config()
  config.data.source = 'synthetic'
  config.data.synthetic_train_examples = 512
  config.data.synthetic_eval_examples = 256
  config.data.eval_train_split = 'train'
  config.data.eval_split = 'test'
  config.batch_size = 64
  config.num_epochs = 2
  # Higher than the recipe's, for a loss that visibly falls within 16 steps.
  config.optim.base_lr = 0.2
  config.optim.lr_schedule = 'cosine'
  config.log_every_steps = 4
  config.checkpoint_every_steps = 4
  config.evals.knn.every_epochs = 1
  return config
