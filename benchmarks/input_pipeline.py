"""Two-view images/s per CPU core: our tf.data pipeline vs the official PyTorch one, or our
pipeline in its two modes (config.data.augment_on 'host' and 'device', with and without
PIL-faithful resizing) side by side.

Both read the same 224px JPEG folder (CIFAR-10 images upsized, written to a temporary
directory at run time) and apply the same recipe (MoCo v2 with blur, image size 224):
ours is simsiam_jax.data.input_pipeline with `host_threads` = cores; the official one is
torchvision transforms on PIL images in a DataLoader with `num_workers` = cores, as in
facebookresearch/simsiam main_simsiam.py. The torch side runs in a subprocess with
another interpreter, since torch lives in its own virtualenv.

  /work/venv/bin/python benchmarks/input_pipeline.py \
      --torch_python=/work/venv-torch/bin/python [--antialias=0 --dct_method=INTEGER_FAST]

Note the official pipeline also normalizes to float32 on the host (ToTensor, Normalize);
ours ships uint8 and normalizes on the device, which is part of the design being measured.

  python benchmarks/input_pipeline.py --compare=modes

times our host side only, in each of augment_on=host and device (where the host decodes,
crops and resizes, and the train step does the rest) with resize_antialias 0 and 1: four
variants in fresh processes, alternated over the repeats. No torch needed.
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time

IMAGE_SIZE = 224


def make_jpeg_folder(source: str, root: str, images_per_class: int):
  """root/train/<class>/*.jpg: the first images of each class of `source`, upsized."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for name in sorted(os.listdir(source)):
    os.makedirs(os.path.join(root, 'train', name))
    for file in sorted(os.listdir(os.path.join(source, name)))[:images_per_class]:
      with Image.open(os.path.join(source, name, file)) as image:
        image = image.convert('RGB').resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
      image.save(os.path.join(root, 'train', name, file), quality=90)


def cpu_seconds(pids=()) -> float:
  """CPU time (user + system) of this process and of the processes `pids`."""
  ticks = os.sysconf('SC_CLK_TCK')
  total = sum(os.times()[:2])
  for pid in pids:
    with open(f'/proc/{pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()
    total += (int(fields[11]) + int(fields[12])) / ticks
  return total


def measure(batches, batch_size: int, warmup: int, steps: int, pids=lambda: ()):
  """Images/s (wall clock) and images per CPU second over `steps` batches after warmup.

  The second does not depend on other jobs sharing the machine.
  """
  for _ in range(warmup):
    next(batches)
  start, start_cpu = time.perf_counter(), cpu_seconds(pids())
  for _ in range(steps):
    next(batches)
  images = steps * batch_size
  return {'wall': images / (time.perf_counter() - start),
          'cpu': images / (cpu_seconds(pids()) - start_cpu)}


def tf_images_per_s(args):
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import base  # pylint: disable=g-import-not-at-top
  from simsiam_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  config = base.get_base_config()
  config.data.source = 'folder'
  config.data.root = args.root
  config.data.image_size = IMAGE_SIZE
  config.data.host_threads = args.cores
  config.data.resize_antialias = bool(args.antialias)
  config.data.jpeg_dct_method = args.dct_method
  config.data.augment_on = args.augment_on
  config.batch_size = args.batch_size
  batches = input_pipeline.create_pretrain_iterator(config, process_index=0,
                                                    process_count=1)
  return measure(batches, args.batch_size, args.warmup, args.steps)


def torch_images_per_s(args):
  """The official SimSiam pipeline (main_simsiam.py and simsiam/loader.py)."""
  # pylint: disable=g-import-not-at-top
  import random
  import torch
  from PIL import ImageFilter
  from torchvision import datasets, transforms

  class GaussianBlur:
    def __init__(self, sigma):
      self.sigma = sigma

    def __call__(self, x):
      return x.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))

  class TwoCropsTransform:
    def __init__(self, transform):
      self.transform = transform

    def __call__(self, x):
      return [self.transform(x), self.transform(x)]

  augmentation = transforms.Compose([
      transforms.RandomResizedCrop(IMAGE_SIZE, scale=(0.2, 1.0)),
      transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
      transforms.RandomGrayscale(p=0.2),
      transforms.RandomApply([GaussianBlur([0.1, 2.0])], p=0.5),
      transforms.RandomHorizontalFlip(),
      transforms.ToTensor(),
      transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
  ])
  dataset = datasets.ImageFolder(os.path.join(args.root, 'train'),
                                 TwoCropsTransform(augmentation))
  loader = torch.utils.data.DataLoader(
      dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.cores,
      drop_last=True, persistent_workers=True)

  def forever():
    while True:
      yield from loader

  batches = forever()
  next(batches)  # Starts the workers.
  # pylint: disable-next=protected-access
  worker_pids = lambda: [w.pid for w in loader._iterator._workers]
  return measure(batches, args.batch_size, args.warmup, args.steps, worker_pids)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--torch_python', default='/work/venv-torch/bin/python',
                      help='interpreter with torch and torchvision')
  parser.add_argument('--source', default=os.path.join(
      os.path.dirname(__file__), '..', '..', 'shared', 'data', 'cifar10', 'train'),
                      help='folder of <class>/*.jpg to upsize')
  parser.add_argument('--images_per_class', type=int, default=200)
  parser.add_argument('--cores', type=int, default=os.cpu_count())
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--side', choices=['both', 'tf', 'torch'], default='both')
  parser.add_argument('--root', help='the 224px folder (made here when --side=both)')
  parser.add_argument('--antialias', type=int, default=1,
                      help='config.data.resize_antialias of our side (1 or 0)')
  parser.add_argument('--dct_method', default='INTEGER_ACCURATE',
                      help='config.data.jpeg_dct_method of our side')
  parser.add_argument('--augment_on', choices=['host', 'device'], default='host',
                      help='config.data.augment_on of our side')
  parser.add_argument('--compare', choices=['torch', 'modes'], default='torch',
                      help='ours against torchvision, or our modes against each other')
  parser.add_argument('--gflop_per_image', type=float, default=48.2,
                      help="the ResNet-50 SimSiam step's GFLOP per image (the pod plan's)")
  parser.add_argument('--tpu_utilisation', type=float, default=0.4)
  parser.add_argument('--gpu_utilisation', type=float, default=0.3)
  args = parser.parse_args()

  if args.side != 'both':
    fn = tf_images_per_s if args.side == 'tf' else torch_images_per_s
    print(json.dumps(fn(args)))
    return

  def run_side(side, antialias=args.antialias, augment_on=args.augment_on):
    command = [sys.executable if side == 'tf' else args.torch_python, __file__,
               f'--side={side}', f'--root={args.root}', f'--cores={args.cores}',
               f'--batch_size={args.batch_size}', f'--warmup={args.warmup}',
               f'--steps={args.steps}', f'--antialias={antialias}',
               f'--dct_method={args.dct_method}', f'--augment_on={augment_on}']
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])

  if args.compare == 'modes':
    variants = {(augment_on, antialias): functools.partial(run_side, 'tf', antialias, augment_on)
                for antialias in (0, 1) for augment_on in ('host', 'device')}
  else:
    variants = {side: functools.partial(run_side, side) for side in ('tf', 'torch')}
  with tempfile.TemporaryDirectory() as args.root:
    make_jpeg_folder(args.source, args.root, args.images_per_class)
    # Each variant in a fresh process, so none inherits another's threads or caches;
    # alternated, so that a burst of load from other jobs does not hit one variant only.
    runs = {name: [] for name in variants}
    for _ in range(args.repeats):
      for name, run in variants.items():
        runs[name].append(run())
  best = {name: {k: max(r[k] for r in rs) for k in ('wall', 'cpu')}
          for name, rs in runs.items()}
  if args.compare == 'modes':
    print_modes(args, best)
    return
  print(f'{args.cores} cores, {args.batch_size}-image batches, {IMAGE_SIZE}px JPEGs, '
        f'two views per image, best of {args.repeats}; ours with antialias={args.antialias}, '
        f'dct_method={args.dct_method}')
  print('                        images/s/core (wall / cores)   images per CPU second')
  for side, name in (('tf', 'tf.data (ours)'), ('torch', 'torchvision (official)')):
    print(f'{name:24s}{best[side]["wall"] / args.cores:12.1f}{best[side]["cpu"]:30.1f}')
  print(f'{"ratio":24s}{best["tf"]["wall"] / best["torch"]["wall"]:11.2f}x'
        f'{best["tf"]["cpu"] / best["torch"]["cpu"]:29.2f}x')


def print_modes(args, best):
  print(f'{args.cores} cores, {args.batch_size}-image batches, {IMAGE_SIZE}px JPEGs, '
        f'two views per image, best of {args.repeats}, dct_method={args.dct_method}')
  print('| augment_on | resize_antialias | images/s/core (wall / cores) | images per CPU-s '
        '| against host, antialias 0 (CPU) |')
  print('|---|---|---|---|---|')
  reference = best[('host', 0)]['cpu']
  for (augment_on, antialias), figures in best.items():
    print(f'| {augment_on} | {antialias} | {figures["wall"] / args.cores:.1f} | '
          f'{figures["cpu"]:.1f} | {figures["cpu"] / reference:.2f}x |')
  print_input_budget(args, {variant: figures['cpu'] for variant, figures in best.items()})


def print_input_budget(args, images_per_cpu_s):
  """Per host type: the images/s its chips want against what its vCPUs give in each mode."""
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from simsiam_jax.scale import hardware  # pylint: disable=g-import-not-at-top
  print(f'\nInput budget: the chips want utilisation x bf16 peak / {args.gflop_per_image} GFLOP '
        f'per image (TPU {args.tpu_utilisation:.0%}, GPU {args.gpu_utilisation:.0%}); a host '
        'gives vCPUs x images per CPU-s (each vCPU as one core here).')
  variants = list(images_per_cpu_s)
  print('| host | chips | vCPUs | chips want (images/s) | ' +
        ' | '.join(f'{a}, antialias {b}: gives (share of need)' for a, b in variants) + ' |')
  print('|---|---|---|---|' + '---|' * len(variants))
  for name, host in hardware.HOSTS.items():
    utilisation = args.gpu_utilisation if 'H100' in name else args.tpu_utilisation
    want = (host.chips * utilisation * hardware.PEAK_TFLOPS[host.peak_key][0] * 1e12 /
            (args.gflop_per_image * 1e9))
    gives = [host.vcpus * images_per_cpu_s[variant] for variant in variants]
    print(f'| {name} | {host.chips} | {host.vcpus} | {want:,.0f} | ' +
          ' | '.join(f'{g:,.0f} ({g / want:.0%})' for g in gives) + ' |')


if __name__ == '__main__':
  main()
