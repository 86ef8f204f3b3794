"""Times the real jitted train step of a config: images/s, FLOPs, MFU and memory per device.

  python benchmarks/train_step.py --config=configs/cifar10_cpu.py \
      [--methods=simsiam,simclr,moco_v2,byol,swav] [--augment_on=host,device] [--rounds=7] \
      [--warmup=2] [--config.FIELD=VALUE ...] [--json_out=FILE]

For each method (default: the config's `method`), and each of `--augment_on`'s modes
(default: the config's; 'device' adds the recipe after the crop to the step), the step is
the one pretraining runs
(`train.make_train_step` on the mesh of all devices), fed random uint8 views of the
config's batch and image size, so no data is read. Each is compiled ahead (the compile
time is reported apart), warmed up, then timed one awaited step at a time in rounds that
alternate the methods, so that they share whatever else the machine is doing; the figure
is the median over the rounds. Reported per method: step time, images/s (one image = its
two views), XLA's FLOP count of the step (cost analysis), achieved TFLOP/s, MFU against
the device's peak (simsiam_jax/scale/hardware.py: data sheets, or on a CPU its float32 matmul
rate measured here), and the step's memory per device (XLA's memory analysis).

Where torch is installed and the config is SimSiam in float32 on a CPU host, the official
PyTorch step (benchmarks/torch_step.py) on the same shapes takes part in the same rounds
beside the simsiam step, and the JAX/PyTorch ratio of their medians is printed; otherwise
the reason it is left out.
"""

import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

# Run as a script from anywhere: the package and configs/ are beside this directory.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# pylint: disable=wrong-import-position
from simsiam_jax import cli, methods, sharding, train
from simsiam_jax.scale import hardware
from simsiam_jax.train_state import compute_dtype
from benchmarks import torch_step
# pylint: enable=wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Configuration whose step to time.',
                                lock_config=True)
flags.DEFINE_list('methods', None, 'Methods to time side by side (default: config.method).')
flags.DEFINE_list('augment_on', None, 'Modes of config.data.augment_on to time side by side '
                  '(default: config.data.augment_on).')
flags.DEFINE_integer('rounds', 7, 'Timed steps per method (the median is reported).')
flags.DEFINE_integer('warmup', 2, 'Untimed steps per method after compiling.')
flags.DEFINE_integer('num_examples', 50_000,
                     'Training-set size the schedules (and a memory bank) are built for.')
flags.DEFINE_string('json_out', None, 'Also write the results as JSON here.')
flags.DEFINE_bool('torch', True, 'Also time the official PyTorch step where it applies.')
flags.DEFINE_float('pause_seconds', 1.0,
                   'Idle time before each timed step, for the thread pools the previous '
                   'step left spinning (XLA, YNNPACK, OpenMP) to go to sleep.')


def random_batch(config, mesh) -> dict:
  """A global batch of random uint8 views in the pipeline's layout, sharded like one."""
  rng = np.random.default_rng(0)
  batch = {name: rng.integers(0, 256, shape.shape, shape.dtype)
           for name, shape in train.batch_shapes(config).items() if name != 'index'}
  batch['index'] = np.arange(config.batch_size, dtype=np.int32)
  return jax.device_put(batch, sharding.batch_sharding(mesh))


class TimedStep:
  """One method's compiled step and the state it carries from call to call."""

  def __init__(self, config, mesh, num_examples: int):
    self.config = config
    method = methods.get(config.method)
    method.validate(config)
    steps_per_epoch = max(num_examples // config.batch_size, 1)
    self.state = method.create_train_state(
        jax.random.key(config.seed), config, method.create_optimizer(config, steps_per_epoch),
        mesh, num_examples)
    self.batch = random_batch(config, mesh)
    step = train.make_train_step(config, steps_per_epoch, mesh, self.state)
    started = time.perf_counter()
    self.step = step.lower(self.state, self.batch).compile()
    self.compile_seconds = time.perf_counter() - started
    self.flops = train.step_flops(self.step)
    self.memory_mib = train.step_memory_mib(self.step).get('total', float('nan'))
    self.times = []

  def run(self) -> float:
    started = time.perf_counter()
    self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready(metrics)
    return time.perf_counter() - started


def main(argv):
  cli.check_no_arguments(argv)
  cli.quiet_library_output()
  config = FLAGS.config
  mesh = sharding.create_mesh()
  names = FLAGS.methods or [config.method]
  modes = FLAGS.augment_on or [config.data.augment_on]
  steps = {}
  for name in names:
    for mode in modes:
      variant = config.copy_and_resolve_references()
      variant.method = name
      variant.data.augment_on = mode
      steps[name if len(modes) == 1 else f'{name}, augment_on={mode}'] = TimedStep(
          variant, mesh, FLAGS.num_examples)
  # The official step augments nothing: it is compared with the host mode's.
  simsiam = next((name for name, step in steps.items() if step.config.method == 'simsiam' and
                  step.config.data.augment_on == 'host'), None)
  if not FLAGS.torch:
    torch_reason = 'not asked for (--notorch)'
  elif simsiam is None:
    torch_reason = 'it is compared with the simsiam step in host mode, which is not timed here'
  else:
    torch_reason = torch_step.unsupported_reason(steps[simsiam].config, jax.devices()[0].platform)
  torch_official = (torch_step.TorchStep(steps[simsiam].config) if torch_reason is None
                    else None)
  timed = [*steps.values(), *([torch_official] if torch_official else [])]
  for step in timed:
    for _ in range(FLAGS.warmup):
      step.run()
  for _ in range(FLAGS.rounds):
    for step in timed:
      time.sleep(FLAGS.pause_seconds)
      step.times.append(step.run())
  dtype = str(jnp.dtype(compute_dtype(config)))
  peak, peak_source = hardware.peak_tflops(jax.devices()[0], dtype)
  results = {}
  for name, step in steps.items():
    seconds = statistics.median(step.times)
    tflops = step.flops / seconds / 1e12  # XLA counts the whole program, all devices.
    results[name] = {
        'step_seconds': seconds, 'images_per_second': config.batch_size / seconds,
        'compile_seconds': step.compile_seconds, 'gflop_per_step': step.flops / 1e9,
        'tflops': tflops, 'mfu': tflops / (peak * jax.device_count()),
        'memory_mib_per_device': step.memory_mib}
  devices = f'{jax.device_count()} x {jax.devices()[0].device_kind}'
  print(f'{config.model.name} at {config.data.image_size}px, batch {config.batch_size}, '
        f'{dtype}, on {devices}; peak {peak:.3g} TFLOP/s per device ({peak_source}); median '
        f'of {FLAGS.rounds} steps')
  print('| step | step (s) | images/s | GFLOP/step | TFLOP/s | MFU | memory/device (MiB) '
        '| compile (s) |')
  print('|---|---|---|---|---|---|---|---|')
  for name, r in results.items():
    print(f'| {name} | {r["step_seconds"]:.3f} | {r["images_per_second"]:.1f} | '
          f'{r["gflop_per_step"]:.1f} | {r["tflops"]:.3f} | {r["mfu"]:.1%} | '
          f'{r["memory_mib_per_device"]:.0f} | {r["compile_seconds"]:.1f} |')
  report = {'devices': devices, 'peak_tflops_per_device': peak, 'peak_source': peak_source,
            'xla_flags': os.environ.get('XLA_FLAGS', ''), 'results': results}
  for name in names:
    host, device = (f'{name}, augment_on={mode}' for mode in ('host', 'device'))
    if host in results and device in results:
      report.setdefault('device_augmentation', {})[name] = {
          'flops_share': 1 - results[host]['gflop_per_step'] / results[device]['gflop_per_step'],
          'step_time_ratio': results[device]['step_seconds'] / results[host]['step_seconds']}
      print(f'{name}: device augmentation is '
            f'{report["device_augmentation"][name]["flops_share"]:.2%} of the device-mode step\'s '
            f'FLOPs; step time device/host '
            f'{report["device_augmentation"][name]["step_time_ratio"]:.3f}x')
  if torch_official:
    torch_seconds = statistics.median(torch_official.times)
    report['pytorch'] = {'step_seconds': torch_seconds, 'threads': torch_official.threads,
                         'jax_over_pytorch': results[simsiam]['step_seconds'] / torch_seconds}
    print(f'| pytorch (official, {torch_official.threads} threads) | {torch_seconds:.3f} | '
          f'{config.batch_size / torch_seconds:.1f} | | | | | |')
    print(f'JAX/PyTorch step time (simsiam, host mode): '
          f'{report["pytorch"]["jax_over_pytorch"]:.2f}x')
  else:
    print(f'PyTorch step not timed: {torch_reason}.')
  print(f'XLA_FLAGS: {report["xla_flags"] or "(none)"}')
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'w') as f:
      json.dump(report, f, indent=2)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
