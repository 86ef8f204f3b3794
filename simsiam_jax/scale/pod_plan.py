"""A compile-only plan of a pretraining run on TPU slices and GPU hosts: `--config.dry_run=True`.

For each slice of `config.pod_plan.slices` the real train step of the config is compiled
for that slice, with the train state as shapes only (jax.eval_shape): no parameter is
allocated and no data is read. With libtpu installed (`pip install ".[tpu]"`), the TPU
compiler compiles it for a TPU slice's real topology (jax.experimental.topologies gives
compile-only TPU devices on any host, as MaxText's train_compile.py does); with jax's CUDA
plugin installed (`pip install ".[cuda-plan]"`, no GPU or CUDA needed), XLA's GPU compiler
compiles it for H100 hosts (compile-only devices from XLA's H100 target description).
Without the slice's compiler the CPU compiler does, on as many fake CPU devices as the
slice has chips, and its memory and collectives are the CPU program's (which neither tiles
to TPU layouts nor fuses nor combines collectives as the TPU compiler does): each row names
its compiler.

Per chip, from the compiled program:
- HBM: its arguments, outputs, temporaries and generated code, and their peak (the TPU
  compiler's; the CPU compiler's sum, the donated state counted once) against the chip's
  HBM (data sheet): fits or does not fit (a compiler that refuses the program as too large
  for the chip's memory says the same). Where the config's batch
  does not fit, the largest power-of-two batch per chip that fits is found by compiling
  (halving from the config's), and the one that fits with `model.remat` (each residual
  block recomputed in the backward pass); the other figures are then those of the largest
  batch that fits.
- A roofline from XLA's cost analysis: its FLOPs against the chip's peak (compute time),
  its bytes accessed that are HBM's against the chip's HBM bandwidth (memory time), the
  bound (the larger) and the ceiling on MFU that follows (compute time / the larger). The
  bytes accessed are the reads and writes of the fused program's top-level instructions;
  their HBM share is the share of those bytes whose buffers the compiler left in the
  default memory space (`memory_space_bytes`), not in on-chip memory. The GPU compiler
  gives no cost analysis: there the FLOPs are XLA's count for the step before it is
  partitioned (over the chips) and the bytes are those between the program's kernels.
- Its collectives by kind, count and bytes, the all-reduces of weight gradients (any
  operand of rank 2 or more, or a flat one of 1 MiB or more) told apart from those of
  vectors and scalars (BatchNorm
  statistics and their gradients, BatchNorm parameters' gradients, metrics); their time is
  a bandwidth term (ring: an all-reduce moves 2(n-1)/n of its bytes per chip, at the data
  sheet's all-reduce bandwidth per chip) plus a latency term (on a TPU slice
  ICI_HOP_LATENCY_S per hop, an all-reduce taking 2 floor(a/2) hops along each torus axis
  of a chips; on GPUs NCCL's ring model: a base latency and one per step, 2(n-1) steps).
- The estimated step: the roofline time plus the communication time, with no overlap.
- With `data.augment_on='device'`, what the augmentation adds to the step: the
  augmentation alone compiled the same way, its FLOPs and bytes accessed per chip and
  their shares of the step's.
"""

import dataclasses
import importlib.util
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from simsiam_jax import config_validation, data, methods, sharding, train
from simsiam_jax.config_validation import ConfigError
from simsiam_jax.scale import hardware
from simsiam_jax.train_state import compute_dtype

# 'auto': each slice by its own compiler where installed, else by the CPU compiler;
# 'native': by its own compiler or not at all; 'cpu': every slice by the CPU compiler.
COMPILERS = ('auto', 'native', 'cpu')
COMPILER_NAMES = {'tpu': 'TPU (libtpu)', 'gpu': 'GPU (XLA, CUDA plugin)',
                  'cpu': 'CPU (fake devices)'}
_INSTALL = {'tpu': 'libtpu is not installed; pip install ".[tpu]"',
            'gpu': "jax's CUDA plugin is not installed; pip install \".[cuda-plan]\""}


@dataclasses.dataclass(frozen=True)
class TpuGeneration:
  chip: str  # The entry of hardware.TPU_CHIPS.
  topology_prefix: str  # libtpu's topology name: 'v4:2x2x1', 'v5e:4x4'.
  # 'megacore': one JAX device per chip, its two TensorCores together (v4, v5p, as they
  # train); 'default' for the one-TensorCore chips.
  chip_config: str
  cores_per_chip_in_name: int  # v4-8 counts TensorCores (2 per chip); v5e-8 counts chips.
  torus_axes: int


TPU_GENERATIONS = {
    'v4': TpuGeneration('v4', 'v4', 'megacore', 2, 3),
    'v5p': TpuGeneration('v5p', 'v5', 'megacore', 2, 3),
    'v5e': TpuGeneration('v5e', 'v5e', 'default', 1, 2),
    'v5litepod': TpuGeneration('v5e', 'v5e', 'default', 1, 2),
    'v6e': TpuGeneration('v6e', 'v6e', 'default', 1, 2),
}


@dataclasses.dataclass(frozen=True)
class TpuSlice:
  name: str
  generation: TpuGeneration
  shape: tuple[int, ...]  # Chips along each torus axis.
  platform = 'tpu'

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def chip(self) -> hardware.Chip:
    return hardware.TPU_CHIPS[self.generation.chip]

  @property
  def all_reduce_bytes_per_s(self) -> float:
    return self.chip.all_reduce_bytes_per_s

  @property
  def topology_name(self) -> str:
    return f'{self.generation.topology_prefix}:{"x".join(map(str, self.shape))}'

  @property
  def all_reduce_hops(self) -> int:
    """Hops of an all-reduce over the slice: a reduce-scatter and an all-gather along each
    torus axis, floor(a/2) hops each way on a bidirectional ring of a chips."""
    return sum(2 * (a // 2) for a in self.shape)

  def latency_s(self, op: str) -> float:
    """One collective's latency over the slice's torus: ICI_HOP_LATENCY_S per hop."""
    hops = {'all-reduce': self.all_reduce_hops, 'collective-permute': 1}.get(
        op, self.all_reduce_hops / 2)
    return hops * hardware.ICI_HOP_LATENCY_S


@dataclasses.dataclass(frozen=True)
class GpuSlice:
  """H100 GPUs, 8 to a host over NVLink (NVSwitch), hosts over InfiniBand."""
  name: str
  hosts: int
  gpus_per_host: int
  platform = 'gpu'
  chip = hardware.H100

  @property
  def chips(self) -> int:
    return self.hosts * self.gpus_per_host

  @property
  def topology_name(self) -> str:
    """The CUDA plugin's topology: slices x hosts x GPUs per host."""
    return f'1x{self.hosts}x{self.gpus_per_host}'

  @property
  def all_reduce_bytes_per_s(self) -> float:
    """A ring's bandwidth is its slowest link's: NVLink within a host, else the network."""
    if self.hosts == 1:
      return self.chip.all_reduce_bytes_per_s
    return min(self.chip.all_reduce_bytes_per_s, hardware.H100_NETWORK_BYTES_PER_S)

  def latency_s(self, op: str) -> float:
    """NCCL's ring model: a base latency and one per step (2(n-1) steps for an all-reduce,
    n-1 for the others), `hosts` of each n steps over the network."""
    n = self.chips
    steps = {'all-reduce': 2 * (n - 1), 'collective-permute': 1}.get(op, n - 1)
    network_steps = steps * (self.hosts / n if self.hosts > 1 else 0)
    return (hardware.NCCL_BASE_LATENCY_S + network_steps * hardware.NCCL_NETWORK_STEP_LATENCY_S +
            (steps - network_steps) * hardware.NCCL_NVLINK_STEP_LATENCY_S)


def slice_shape(chips: int, torus_axes: int) -> tuple[int, ...]:
  """The slice shapes of Cloud TPU for a power-of-two number of chips: 2D 2x4, 4x4, 8x16;
  3D 2x2x1, 2x2x4, 4x4x8 (the larger axes last)."""
  k = chips.bit_length() - 1
  if torus_axes == 3 and k == 2:
    return (2, 2, 1)
  exponents = [k // torus_axes + (i >= torus_axes - k % torus_axes) for i in range(torus_axes)]
  return tuple(2**e for e in exponents)


GPUS_PER_HOST = 8


def parse_slice(name: str):
  """'v4-32' -> the TPU slice: its generation and its chips along each torus axis;
  'h100-64' -> 64 H100 GPUs, 8 to a host (fewer than 8: one host)."""
  gpus = re.fullmatch(r'h100-(\d+)', name.strip())
  if gpus:
    count = int(gpus.group(1))
    if count < 1 or (count > GPUS_PER_HOST and count % GPUS_PER_HOST) or (
        count < GPUS_PER_HOST and count & (count - 1)):
      raise ConfigError(f'config.pod_plan.slices: {name!r}: H100 hosts have '
                        f'{GPUS_PER_HOST} GPUs; plan 1, 2, 4 or a multiple of 8')
    hosts = max(count // GPUS_PER_HOST, 1)
    return GpuSlice(name.strip(), hosts, count // hosts)
  match = re.fullmatch(r'(v\w+?)-(\d+)', name.strip())
  if not match or match.group(1) not in TPU_GENERATIONS:
    raise ConfigError(f'config.pod_plan.slices: {name!r} is not a TPU slice name such as '
                      f'v4-32 or v5e-64 (generations: {", ".join(TPU_GENERATIONS)}) nor '
                      'GPUs such as h100-8')
  generation = TPU_GENERATIONS[match.group(1)]
  cores = int(match.group(2))
  if cores % generation.cores_per_chip_in_name:
    raise ConfigError(f'config.pod_plan.slices: {name!r} counts TensorCores, '
                      f'{generation.cores_per_chip_in_name} per chip')
  chips = cores // generation.cores_per_chip_in_name
  smallest = 4 if generation.torus_axes == 3 else 1
  if chips & (chips - 1) or chips < smallest:
    raise ConfigError(f'config.pod_plan.slices: {name!r} has {chips} chips; the plan knows '
                      f'the slices of a power of two chips, at least {smallest}')
  return TpuSlice(name.strip(), generation, slice_shape(chips, generation.torus_axes))


def slices(pod_plan: ml_collections.ConfigDict) -> list:
  names = [name.strip() for name in pod_plan.slices.split(',') if name.strip()]
  if not names:
    raise ConfigError('config.pod_plan.slices: name at least one TPU slice, e.g. v4-8')
  return [parse_slice(name) for name in names]


def tpu_compiler_installed() -> bool:
  return importlib.util.find_spec('libtpu') is not None


def gpu_compiler_installed() -> bool:
  try:
    return importlib.util.find_spec('jax_plugins.xla_cuda12') is not None
  except ModuleNotFoundError:  # No jax_plugins package at all.
    return False


def compiler(pod_plan: ml_collections.ConfigDict, slice_) -> str:
  """'tpu', 'gpu' or 'cpu': the compiler that plans `slice_` (config.pod_plan.compiler)."""
  config_validation.require(pod_plan.compiler in COMPILERS, 'config.pod_plan.compiler',
                            pod_plan.compiler, f'choose one of {", ".join(COMPILERS)}')
  if pod_plan.compiler == 'cpu':
    return 'cpu'
  installed = {'tpu': tpu_compiler_installed, 'gpu': gpu_compiler_installed}[slice_.platform]()
  if installed:
    return slice_.platform
  if pod_plan.compiler == 'native':
    raise ConfigError(f"config.pod_plan.compiler='native': {slice_.name} needs its own "
                      f'compiler: {_INSTALL[slice_.platform]}')
  return 'cpu'


def prepare_backend(pod_plan: ml_collections.ConfigDict):
  """Before JAX's backend starts: JAX on the CPU (the TPU and GPU compilers need no TPU or
  GPU backend), with as many fake devices as the largest slice has chips where the CPU
  compiler plans."""
  planned_on_cpu = [s.chips for s in slices(pod_plan) if compiler(pod_plan, s) == 'cpu']
  if planned_on_cpu:
    count = max(planned_on_cpu)
    kept = [flag for flag in os.environ.get('XLA_FLAGS', '').split()
            if not flag.startswith('--xla_force_host_platform_device_count=')]
    os.environ['XLA_FLAGS'] = ' '.join(
        [*kept, f'--xla_force_host_platform_device_count={count}'])
  jax.config.update('jax_platforms', 'cpu')


def devices(slice_, compiler_name: str) -> list:
  """The slice's compile-only TPU or GPU devices, one per chip; or as many fake CPU
  devices."""
  if compiler_name == 'cpu':
    available = jax.device_count()
    if slice_.chips > available:
      raise ConfigError(f'the plan of {slice_.name} needs {slice_.chips} devices and JAX has '
                        f'{available}: run it through `python -m simsiam_jax.main`, which '
                        'asks for them')
    return jax.devices()[:slice_.chips]
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  if compiler_name == 'gpu':
    return topologies.get_topology_desc(slice_.name, 'cuda',
                                        target_config=hardware.H100_TARGET_CONFIG,
                                        topology=slice_.topology_name).devices
  # Before libtpu loads: there is no TPU here to ask a metadata server about; libtpu prints
  # warnings for the host it would run on unless these describe one; and compiling takes no
  # TPU, so other processes may load libtpu at the same time (its lockfile guards a TPU).
  for variable, value in (('TPU_SKIP_MDS_QUERY', '1'), ('TPU_WORKER_HOSTNAMES', 'localhost'),
                          ('TPU_ACCELERATOR_TYPE', slice_.name),
                          ('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')):
    os.environ.setdefault(variable, value)
  host_bounds = tuple(min(2, a) for a in (*slice_.shape, 1)[:3])
  return topologies.get_topology_desc(
      platform='tpu', topology_name=slice_.topology_name,
      chip_config_name=slice_.generation.chip_config, chips_per_host_bounds=host_bounds,
      num_slices=1).devices


# Collectives in compiled HLO and the share of their bytes each chip sends over a ring.
_RING_FACTORS = {'all-reduce': lambda n: 2 * (n - 1) / n, 'all-gather': lambda n: (n - 1) / n,
                 'reduce-scatter': lambda n: (n - 1) / n, 'all-to-all': lambda n: (n - 1) / n,
                 'collective-permute': lambda n: 1.0}
_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
                'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8}
# `%name = TYPE op(`; a tuple TYPE may hold `/*index=5*/` comments.
_COLLECTIVE = re.compile(r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+(' + '|'.join(_RING_FACTORS) +
                         r')(?:-start)?\(')
_SHAPE = re.compile(r'\b(' + '|'.join(_DTYPE_BYTES) + r')\[([\d,]*)\]')
GRADIENTS, VECTORS = 'weight gradients', 'vectors and scalars'
FLAT_GRADIENTS_BYTES = 2**20


@dataclasses.dataclass(frozen=True)
class Collective:
  op: str
  bytes: int
  rank: int  # The largest rank among its results.

  @property
  def category(self) -> str:
    """Weight gradients: an operand of rank 2 or more, or a flat one of 1 MiB or more (the GPU
    compiler concatenates gradients into flat buffers before reducing them; a BatchNorm
    layer's statistics are at most 2 x 2,048 floats, 16 KiB)."""
    return GRADIENTS if self.rank >= 2 or self.bytes >= FLAT_GRADIENTS_BYTES else VECTORS


def collectives(hlo_text: str) -> list[Collective]:
  """Each collective of a compiled HLO module's text, with the bytes of its result."""
  found = []
  for line in hlo_text.splitlines():
    match = _COLLECTIVE.search(line)
    if match:
      result_type, op = match.groups()
      size, rank = 0, 0
      for dtype, dims in _SHAPE.findall(result_type):
        shape = [int(d) for d in dims.split(',') if d]
        size += math.prod(shape) * _DTYPE_BYTES[dtype]
        rank = max(rank, len(shape))
      found.append(Collective(op, size, rank))
  return found


# `%name = TYPE op(operands...`, an instruction of an HLO computation.
_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s+([\w\-]+)\((.*)$')
# A shape with its layout; `S(n)` in the layout names a memory space other than the default.
_SHAPE_IN_SPACE = re.compile(r'\b(' + '|'.join(_DTYPE_BYTES) + r')\[([\d,]*)\](?:\{([^}]*)\})?')
_SPACE = re.compile(r'S\((\d+)\)')
# Instructions that move no data of their own.
_NO_TRAFFIC = ('parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast')


def memory_space_bytes(hlo_text: str) -> dict[int, int]:
  """{memory space: bytes} read and written by the top-level instructions (the fusions,
  convolutions, collectives) of a compiled module's entry computation: the traffic between
  them, which XLA's 'bytes accessed' counts. Space 0 is the default, HBM; the TPU compiler's
  memory-space assignment moves some buffers to on-chip memory (S(n) in their layouts, such
  as v4's 128 MiB CMEM)."""
  entry = hlo_text[hlo_text.index('\nENTRY '):]
  entry = entry[:entry.find('\n}')]
  defined, traffic = {}, {}
  for line in entry.splitlines()[1:]:
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, result_type, op, rest = match.groups()
    sizes = {}
    for dtype, dims, layout in _SHAPE_IN_SPACE.findall(result_type):
      space = int(next(iter(_SPACE.findall(layout)), 0))
      sizes[space] = sizes.get(space, 0) + math.prod(
          int(d) for d in dims.split(',') if d) * _DTYPE_BYTES[dtype]
    defined[name] = sizes
    # Async copies ('-start'/'-done': prefetches between memory spaces, their results
    # aliasing their sources) are left out; their data is counted where it is used.
    if op in _NO_TRAFFIC or op.endswith(('-start', '-done')):
      continue
    # Its operands: the instructions it names (the computations it calls are not in
    # `defined`).
    operands = [name for name in re.findall(r'%([\w.\-]+)', rest) if name in defined]
    for sizes_of in [sizes] + [defined[operand] for operand in operands]:
      for space, size in sizes_of.items():
        traffic[space] = traffic.get(space, 0) + size
  return traffic


def _abstract_batch(config: ml_collections.ConfigDict, mesh) -> dict:
  placement = sharding.batch_sharding(mesh)
  return {name: jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=placement)
          for name, shape in train.batch_shapes(config).items()}


def _does_not_fit(error: Exception) -> bool:
  return 'RESOURCE_EXHAUSTED' in str(error) or 'Ran out of memory' in str(error)


def lower_step(config: ml_collections.ConfigDict, slice_devices: list):
  """The train step lowered for a mesh of `slice_devices`, the state as shapes."""
  config_validation.validate_config(config, device_count=len(slice_devices))
  method = methods.get(config.method)
  method.validate(config)
  num_examples = config.pod_plan.num_examples
  steps_per_epoch = max(num_examples // config.batch_size, 1)
  mesh = sharding.create_mesh(slice_devices)
  tx = method.create_optimizer(config, steps_per_epoch)
  state = jax.eval_shape(lambda: method.create_train_state(
      jax.random.key(config.seed), config, tx, mesh, num_examples))
  return train.make_train_step(config, steps_per_epoch, mesh, state).lower(
      state, _abstract_batch(config, mesh))


def compile_step(config: ml_collections.ConfigDict, slice_devices: list):
  """The train step compiled for a mesh of `slice_devices`; None where the compiler says it
  does not fit in memory."""
  lowered = lower_step(config, slice_devices)
  try:
    return lowered.compile()
  except Exception as error:  # pylint: disable=broad-except
    if _does_not_fit(error):
      return None
    raise


def hbm_bytes(compiled) -> dict[str, int]:
  """The compiled program's memory per chip: arguments, outputs, temporaries, generated code,
  and the total: the compiler's peak where it gives one (the TPU compiler's, which knows
  which buffers live at once), else their sum with the donated state counted once."""
  analysis = compiled.memory_analysis()
  sizes = {'arguments': analysis.argument_size_in_bytes,
           'outputs': analysis.output_size_in_bytes,
           'temporaries': analysis.temp_size_in_bytes,
           'generated_code': analysis.generated_code_size_in_bytes}
  summed = sum(sizes.values()) - analysis.alias_size_in_bytes
  return {**sizes, 'total': getattr(analysis, 'peak_memory_in_bytes', 0) or summed}


def _with_batch(config: ml_collections.ConfigDict, batch_per_chip: int, chips: int,
                remat: str | None = None) -> ml_collections.ConfigDict:
  config = config.copy_and_resolve_references()
  config.batch_size = batch_per_chip * chips
  if remat is not None:
    config.model.remat = remat
  return config


def unpartitioned_flops(lowered) -> float:
  """XLA's FLOP count of the whole step before it is partitioned over the devices (the CPU
  backend's cost analysis of the lowered module), for a compiler that gives no cost
  analysis of its own (the GPU compiler's compile-only programs)."""
  from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  module = lowered._lowering.hlo().as_hlo_module()  # pylint: disable=protected-access
  return float(_jax.hlo_module_cost_analysis(jax.devices('cpu')[0].client, module)['flops'])


def fits(compiled, chip: hardware.Chip) -> bool:
  return compiled is not None and hbm_bytes(compiled)['total'] <= chip.hbm_bytes


def largest_fitting_batch(config: ml_collections.ConfigDict, slice_, slice_devices,
                          start_per_chip: int, remat: str | None = None):
  """(the largest power-of-two batch per chip from `start_per_chip` down that fits, its
  compiled step), found by compiling; (0, None) if not even one image fits."""
  chip = slice_.chip
  per_chip = start_per_chip
  while per_chip >= 1:
    logging.info('%s: compiling at batch %d per chip%s...', slice_.name, per_chip,
                 f' with model.remat={remat}' if remat else '')
    compiled = compile_step(_with_batch(config, per_chip, slice_.chips, remat), slice_devices)
    if fits(compiled, chip):
      return per_chip, compiled
    per_chip //= 2
  return 0, None


def cost_per_chip(compiled, spaces: dict[int, int], flops: float | None) -> dict[str, float]:
  """{'flops', 'bytes_accessed'} of one chip's program: XLA's cost analysis, or where the
  compiler gives none, `flops` and the bytes between the program's kernels (`spaces`, its
  memory_space_bytes)."""
  cost = train.step_cost(compiled)
  if math.isnan(cost['flops']):
    cost = {'flops': flops, 'bytes_accessed': float(sum(spaces.values()))}
  return cost


def estimate(compiled, slice_, dtype: str, batch_size: int, flops: float | None = None) -> dict:
  """The roofline, the communication and the estimated step of one chip's program; `flops`
  per chip where the compiler's cost analysis has none."""
  chip = slice_.chip
  text = compiled.as_text()
  spaces = memory_space_bytes(text)
  cost = cost_per_chip(compiled, spaces, flops)
  compute_s = cost['flops'] / (hardware.data_sheet_peak_tflops(chip.peak_key, dtype) * 1e12)
  hbm_share = spaces.get(0, 0) / max(sum(spaces.values()), 1)
  memory_s = cost['bytes_accessed'] * hbm_share / chip.hbm_bytes_per_s
  roofline_s = max(compute_s, memory_s)
  ops = collectives(text)
  by_kind = {}
  for c in ops:
    entry = by_kind.setdefault(c.category, {}).setdefault(c.op, {'count': 0, 'mib': 0.0})
    entry['count'] += 1
    entry['mib'] += c.bytes / 2**20
  bandwidth_s = sum(_RING_FACTORS[c.op](slice_.chips) * c.bytes
                    for c in ops) / slice_.all_reduce_bytes_per_s
  latency_s = sum(slice_.latency_s(c.op) for c in ops)
  step_s = roofline_s + bandwidth_s + latency_s
  return {
      'gflop_per_chip': cost['flops'] / 1e9, 'gb_accessed_per_chip': cost['bytes_accessed'] / 1e9,
      'hbm_share_of_bytes_accessed': hbm_share,
      'compute_ms': compute_s * 1e3, 'memory_ms': memory_s * 1e3,
      'bound': 'memory' if memory_s > compute_s else 'compute',
      'mfu_ceiling': compute_s / roofline_s, 'collectives': by_kind,
      'communication_bandwidth_ms': bandwidth_s * 1e3,
      'communication_latency_ms': latency_s * 1e3, 'step_ms': step_s * 1e3,
      'communication_share': (bandwidth_s + latency_s) / step_s,
      'images_per_second': batch_size / step_s}


def device_augmentation_cost(config: ml_collections.ConfigDict, slice_, slice_devices: list,
                             compiler_name: str, step_row: dict) -> dict:
  """What config.data.augment_on='device' adds to the step: the augmentation alone compiled
  for the slice at the config's batch, its FLOPs and bytes accessed per chip and their
  shares of the step's."""
  mesh = sharding.create_mesh(slice_devices)
  lowered = jax.jit(train.device_augmentation(config)).lower(
      _abstract_batch(config, mesh), jax.ShapeDtypeStruct((), jnp.int32))
  flops = (unpartitioned_flops(lowered) / slice_.chips if compiler_name == 'gpu' else None)
  compiled = lowered.compile()
  cost = cost_per_chip(compiled, memory_space_bytes(compiled.as_text()), flops)
  return {'gflop_per_chip': cost['flops'] / 1e9,
          'gb_accessed_per_chip': cost['bytes_accessed'] / 1e9,
          'share_of_step_flops': cost['flops'] / 1e9 / step_row['gflop_per_chip'],
          'share_of_step_bytes': cost['bytes_accessed'] / 1e9 / step_row['gb_accessed_per_chip']}


# A crash of the compiler ends the process (a segmentation fault): said before, not after.
KNOWN_COMPILER_CRASHES = {
    'v6e': 'libtpu 0.0.42.1 crashed compiling the ResNet-50 step for v6e-8 and v6e-16 '
           '(a segmentation fault after about 30 minutes; BENCHMARKS.md); small networks '
           'compile.'}


def plan_slice(config: ml_collections.ConfigDict, slice_, compiler_name: str) -> dict:
  """The plan of one slice: memory and fit, and the estimate at the largest batch that fits
  (the config's if it does)."""
  if config.batch_size % slice_.chips:
    raise ConfigError(f'config.batch_size={config.batch_size}: {slice_.name} has '
                      f'{slice_.chips} chips, which must divide the global batch')
  # The step the slice would run: with data.augment_on='auto', its platform's mode.
  config = config.copy_and_resolve_references()
  config.data.augment_on = data.resolved_augment_on(config.data.augment_on, slice_.platform)
  chip = slice_.chip
  slice_devices = devices(slice_, compiler_name)
  per_chip = config.batch_size // slice_.chips
  if compiler_name == 'tpu' and slice_.generation.chip in KNOWN_COMPILER_CRASHES:
    logging.warning('%s: %s', slice_.name, KNOWN_COMPILER_CRASHES[slice_.generation.chip])
  logging.info('%s (%s, %d chips): compiling the train step with the %s compiler...',
               slice_.name, slice_.topology_name, slice_.chips, compiler_name.upper())
  compiled = compile_step(config, slice_devices)
  row = {'slice': slice_.name, 'topology': slice_.topology_name, 'chips': slice_.chips,
         'compiler': COMPILER_NAMES[compiler_name],
         'dtype': str(jnp.dtype(compute_dtype(config))),
         'augment_on': config.data.augment_on, 'batch_per_chip': per_chip,
         'chip_hbm_gib': chip.hbm_bytes / 2**30,
         'hbm_gib': ({k: v / 2**30 for k, v in hbm_bytes(compiled).items()}
                     if compiled is not None else None),
         'fits': fits(compiled, chip), 'planned_batch_per_chip': per_chip}
  if not row['fits']:
    row['largest_fitting_batch_per_chip'], fitting = largest_fitting_batch(
        config, slice_, slice_devices, per_chip // 2)
    if config.model.remat == 'none':
      row['largest_fitting_batch_per_chip_with_remat'], _ = largest_fitting_batch(
          config, slice_, slice_devices, per_chip, remat='nothing_saveable')
    compiled, row['planned_batch_per_chip'] = fitting, row['largest_fitting_batch_per_chip']
  if compiled is not None:
    planned = _with_batch(config, row['planned_batch_per_chip'], slice_.chips)
    flops = (unpartitioned_flops(lower_step(planned, slice_devices)) / slice_.chips
             if compiler_name == 'gpu' else None)
    row.update(estimate(compiled, slice_, row['dtype'], planned.batch_size, flops))
    if config.data.augment_on == 'device':
      logging.info('%s: compiling the device augmentation alone...', slice_.name)
      row['device_augmentation'] = device_augmentation_cost(planned, slice_, slice_devices,
                                                            compiler_name, row)
  return row


ASSUMPTIONS = (
    'HBM, FLOPs, bytes accessed and collectives: the compiled program per chip (the TPU '
    "compiler's where the compiler column says TPU, XLA's GPU compiler's where it says GPU: "
    'there FLOPs are the unpartitioned step\'s over the chips and bytes those between '
    "kernels); chips' peak FLOP/s, HBM and all-reduce bandwidth: data sheets "
    '(simsiam_jax/scale/hardware.py; H100: NVLink within a host of 8, 400 Gb/s InfiniBand '
    'per GPU between hosts); compute time = FLOPs / peak, memory time = bytes accessed in '
    'HBM / HBM bandwidth, the step bound by the larger; communication = ring bytes / '
    "all-reduce bandwidth + latency (TPU: 1 us per ICI hop; GPU: NCCL's ring LL model, "
    '3.6 us + 0.4 us per NVLink step + 0.9 us per network step); no overlap of '
    'communication with computation (an upper bound), no input pipeline stall.')


def _collective_cell(row: dict, category: str) -> str:
  ops = row.get('collectives', {}).get(category, {})
  return ', '.join(f'{c["count"]} {op} {c["mib"]:.1f} MiB' for op, c in ops.items()) or '-'


def format_table(rows: list[dict]) -> str:
  lines = [f'Assumptions: {ASSUMPTIONS}', '',
           '| slice | compiler | chips | batch/chip | HBM/chip (GiB) | fits | largest '
           'batch/chip that fits (with remat) | GFLOP/chip | GB accessed/chip | compute (ms) '
           '| HBM share | HBM (ms) | bound (MFU ceiling) | all-reduce: weight gradients | all-reduce: '
           'vectors and scalars | communication (ms): bandwidth + latency | step (ms) | '
           'images/s |', '|' + '---|' * 18]
  for r in rows:
    used = f'{r["hbm_gib"]["total"]:.1f}' if r['hbm_gib'] else 'over'
    largest = ('-' if r['fits'] else f'{r["largest_fitting_batch_per_chip"]} '
               f'({r.get("largest_fitting_batch_per_chip_with_remat", "-")})')
    planned = ('' if r['planned_batch_per_chip'] == r['batch_per_chip'] else
               f' (at {r["planned_batch_per_chip"]}/chip)')
    if 'step_ms' in r:
      figures = (f'{r["gflop_per_chip"]:.0f} | {r["gb_accessed_per_chip"]:.1f} | '
                 f'{r["compute_ms"]:.2f} | {r["hbm_share_of_bytes_accessed"]:.0%} | '
                 f'{r["memory_ms"]:.2f} | {r["bound"]} '
                 f'({r["mfu_ceiling"]:.0%}) | {_collective_cell(r, GRADIENTS)} | '
                 f'{_collective_cell(r, VECTORS)} | {r["communication_bandwidth_ms"]:.2f} + '
                 f'{r["communication_latency_ms"]:.2f} | {r["step_ms"]:.2f}{planned} | '
                 f'{r["images_per_second"]:.0f}')
    else:
      figures = ' | '.join(['-'] * 11)
    lines.append(f'| {r["slice"]} ({r["topology"]}) | {r["compiler"]} | {r["chips"]} | '
                 f'{r["batch_per_chip"]} | {used} of {r["chip_hbm_gib"]:.1f} | '
                 f'{"yes" if r["fits"] else "NO"} | {largest} | {figures} |')
  for r in rows:
    if 'device_augmentation' in r:
      a = r['device_augmentation']
      lines.append(f'{r["slice"]}: of the step, the device augmentation (data.augment_on='
                   f"'device') alone is {a['gb_accessed_per_chip']:.1f} GB accessed "
                   f"({a['share_of_step_bytes']:.0%}) and {a['gflop_per_chip']:.1f} GFLOP "
                   f"({a['share_of_step_flops']:.1%}) per chip.")
  return '\n'.join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Plans every slice of config.pod_plan, prints the table, writes pod_plan.json in
  `workdir`; returns {'rows': [...], 'path': ...}."""
  config_validation.require_positive(config, 'pod_plan.num_examples')
  planned = [(slice_, compiler(config.pod_plan, slice_)) for slice_ in slices(config.pod_plan)]
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, 'pod_plan.json')
  rows = []
  for slice_, compiler_name in planned:
    rows.append(plan_slice(config, slice_, compiler_name))
    with open(path, 'w') as f:  # After each slice: minutes of compiling are not lost.
      json.dump(rows, f, indent=2)
  print(format_table(rows), flush=True)
  return {'rows': rows, 'path': path}
