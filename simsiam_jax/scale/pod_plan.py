"""A compile-only plan of a pretraining run on TPU slices: `--config.dry_run=True`.

For each slice of `config.pod_plan.slices` the real train step is lowered and compiled for
a mesh of that many chips, made of fake CPU devices (main.py asks for them before JAX's
backend starts). The train state is shapes only (jax.eval_shape): no parameter is
allocated and no data is read. From the compiled program come the FLOPs of one device's
step (XLA's cost analysis), its memory (XLA's memory analysis, of the CPU compiler: the
TPU compiler lays out and fuses differently, so read it as an estimate) and every
collective with the bytes it moves. The estimated step time adds the compute at
`assumed_mfu` of the chip's peak to the collectives at the slice's all-reduce bandwidth
(ring: an all-reduce moves 2(n-1)/n of its bytes, an all-gather or reduce-scatter
(n-1)/n), with no overlap, so it is an upper bound of the step at that MFU.

The CPU compiler all-reduces each view's weight gradients on its own (the two encoder
calls), twice the float32 gradients; the table shows both figures. The TPU compiler may
merge the two (all-reduce reassociation), so the communication is an upper bound too.
"""

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from simsiam_jax import config_validation, methods, sharding, train
from simsiam_jax.scale import hardware
from simsiam_jax.config_validation import ConfigError
from simsiam_jax.train_state import compute_dtype


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
  peak_key: str  # The entry of hardware.PEAK_TFLOPS.
  cores_per_chip_in_name: int  # v4-8 counts TensorCores (2 per chip); v5e-8 counts chips.
  all_reduce_gb_per_s_per_chip: float


# All-reduce bandwidth per chip: the data sheet's all-reduce bandwidth per pod over its chips
# (cloud.google.com/tpu/docs: v4 1.1 PB/s over 4,096 chips; v5e 51.2 TB/s over 256 chips;
# v5p 4,800 Gbps ICI per chip, half of it taken for an all-reduce's each direction).
TPU_GENERATIONS = {
    'v4': TpuGeneration('TPU v4', 2, 1.1e15 / 4096 / 1e9),
    'v5e': TpuGeneration('TPU v5 lite', 1, 51.2e12 / 256 / 1e9),
    'v5litepod': TpuGeneration('TPU v5 lite', 1, 51.2e12 / 256 / 1e9),
    'v5p': TpuGeneration('TPU v5p', 2, 4800 / 8 / 2),
}

# Collectives in compiled HLO and the share of their bytes each device sends over a ring.
_RING_FACTORS = {'all-reduce': lambda n: 2 * (n - 1) / n, 'all-gather': lambda n: (n - 1) / n,
                 'reduce-scatter': lambda n: (n - 1) / n, 'all-to-all': lambda n: (n - 1) / n,
                 'collective-permute': lambda n: 1.0}
_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
                'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8}
# `%name = TYPE op(`; a tuple TYPE may hold `/*index=5*/` comments.
_COLLECTIVE = re.compile(r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+(' + '|'.join(_RING_FACTORS) +
                         r')(?:-start)?\(')
_SHAPE = re.compile(r'\b(' + '|'.join(_DTYPE_BYTES) + r')\[([\d,]*)\]')


def parse_slice(name: str) -> tuple[TpuGeneration, int]:
  """('v4-32' ->) the TPU generation and the number of chips (JAX devices) of the slice."""
  match = re.fullmatch(r'(v\w+?)-(\d+)', name.strip())
  if not match or match.group(1) not in TPU_GENERATIONS:
    raise ConfigError(f'config.pod_plan.slices: {name!r} is not a TPU slice name such as '
                      f'v4-32 or v5e-64 (generations: {", ".join(TPU_GENERATIONS)})')
  generation = TPU_GENERATIONS[match.group(1)]
  cores = int(match.group(2))
  if cores % generation.cores_per_chip_in_name:
    raise ConfigError(f'config.pod_plan.slices: {name!r} counts TensorCores, '
                      f'{generation.cores_per_chip_in_name} per chip')
  return generation, cores // generation.cores_per_chip_in_name


def slices(pod_plan: ml_collections.ConfigDict) -> dict[str, tuple[TpuGeneration, int]]:
  names = [name.strip() for name in pod_plan.slices.split(',') if name.strip()]
  if not names:
    raise ConfigError('config.pod_plan.slices: name at least one TPU slice, e.g. v4-8')
  return {name: parse_slice(name) for name in names}


def use_fake_devices(pod_plan: ml_collections.ConfigDict):
  """Makes JAX start on the CPU with as many devices as the largest slice has chips. Must
  run before JAX's backend starts; replaces any device count XLA_FLAGS already asks for."""
  count = max(chips for _, chips in slices(pod_plan).values())
  kept = [flag for flag in os.environ.get('XLA_FLAGS', '').split()
          if not flag.startswith('--xla_force_host_platform_device_count=')]
  os.environ['XLA_FLAGS'] = ' '.join([*kept, f'--xla_force_host_platform_device_count={count}'])
  jax.config.update('jax_platforms', 'cpu')


def collectives(hlo_text: str) -> list[tuple[str, int]]:
  """(op, bytes of its result) for each collective of a compiled HLO module's text."""
  found = []
  for line in hlo_text.splitlines():
    match = _COLLECTIVE.search(line)
    if match:
      result_type, op = match.groups()
      size = 0
      for dtype, dims in _SHAPE.findall(result_type):
        elements = 1
        for dim in filter(None, dims.split(',')):
          elements *= int(dim)
        size += elements * _DTYPE_BYTES[dtype]
      found.append((op, size))
  return found


def _abstract_batch(config: ml_collections.ConfigDict, mesh) -> dict:
  placement = sharding.batch_sharding(mesh)
  return {name: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=placement)
          for name, shape in train.batch_shapes(config).items()}


def plan_slice(config: ml_collections.ConfigDict, name: str, generation: TpuGeneration,
               chips: int) -> dict:
  """The compiled step's figures on `chips` fake devices and the slice's estimated step."""
  available = jax.device_count()
  if chips > available:
    raise ConfigError(f'the plan of {name} needs {chips} devices and JAX has {available}: '
                      'run it through `python -m simsiam_jax.main`, which asks for them')
  config_validation.validate_config(config, device_count=chips)
  method = methods.get(config.method)
  method.validate(config)
  num_examples = config.pod_plan.num_examples
  steps_per_epoch = max(num_examples // config.batch_size, 1)
  mesh = sharding.create_mesh(jax.devices()[:chips])
  tx = method.create_optimizer(config, steps_per_epoch)
  state = jax.eval_shape(lambda: method.create_train_state(
      jax.random.key(config.seed), config, tx, mesh, num_examples))
  compiled = train.make_train_step(config, steps_per_epoch, mesh, state).lower(
      state, _abstract_batch(config, mesh)).compile()
  flops = train.step_flops(compiled)
  ops = collectives(compiled.as_text())
  by_op = {}
  for op, size in ops:
    by_op.setdefault(op, [0, 0])
    by_op[op][0] += 1
    by_op[op][1] += size
  dtype = str(jnp.dtype(compute_dtype(config)))
  peak = hardware.data_sheet_peak_tflops(generation.peak_key, dtype)
  compute_s = flops / (peak * 1e12 * config.pod_plan.assumed_mfu)
  comm_s = sum(_RING_FACTORS[op](chips) * size for op, size in ops) / (
      generation.all_reduce_gb_per_s_per_chip * 1e9)
  step_s = compute_s + comm_s
  gradient_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.params))
  return {
      'slice': name, 'chips': chips, 'batch_per_chip': config.batch_size // chips,
      'dtype': dtype, 'gflop_per_chip_step': flops / 1e9,
      'memory_mib_per_chip': train.step_memory_mib(compiled),
      'gradient_mib': gradient_bytes / 2**20,
      'collectives': {op: {'count': count, 'mib': size / 2**20}
                      for op, (count, size) in sorted(by_op.items())},
      'peak_tflops_per_chip': peak, 'assumed_mfu': config.pod_plan.assumed_mfu,
      'all_reduce_gb_per_s_per_chip': generation.all_reduce_gb_per_s_per_chip,
      'compute_ms': compute_s * 1e3, 'communication_ms': comm_s * 1e3, 'step_ms': step_s * 1e3,
      'communication_share': comm_s / step_s, 'images_per_second': config.batch_size / step_s}


def format_table(rows: list[dict]) -> str:
  lines = ['| slice | chips | batch/chip | GFLOP/chip/step | memory/chip (MiB) | gradients '
           '(MiB) | all-reduce per step (MiB) | collectives | compute (ms) | communication '
           '(ms) | step (ms) | communication share | images/s |', '|' + '---|' * 13]
  for r in rows:
    all_reduce = r['collectives'].get('all-reduce', {'mib': 0.0})['mib']
    counts = ', '.join(f'{c["count"]} {op}' for op, c in r['collectives'].items())
    lines.append(
        f'| {r["slice"]} | {r["chips"]} | {r["batch_per_chip"]} | '
        f'{r["gflop_per_chip_step"]:.1f} | {r["memory_mib_per_chip"].get("total", 0):.0f} | '
        f'{r["gradient_mib"]:.1f} | {all_reduce:.1f} | {counts} | {r["compute_ms"]:.2f} | '
        f'{r["communication_ms"]:.2f} | '
        f'{r["step_ms"]:.2f} | {r["communication_share"]:.0%} | {r["images_per_second"]:.0f} |')
  return '\n'.join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Plans every slice of config.pod_plan, prints the table, writes pod_plan.json in
  `workdir`; returns {'rows': [...], 'path': ...}."""
  config_validation.require_in(config, 'pod_plan.assumed_mfu', 0, 1)
  config_validation.require_positive(config, 'pod_plan.num_examples')
  rows = []
  for name, (generation, chips) in slices(config.pod_plan).items():
    logging.info('Compiling the train step for %s (%d chips)...', name, chips)
    rows.append(plan_slice(config, name, generation, chips))
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'pod_plan.json')
  with open(path, 'w') as f:
    json.dump(rows, f, indent=2)
  print(format_table(rows), flush=True)
  return {'rows': rows, 'path': path}
