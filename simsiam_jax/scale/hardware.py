"""Data sheets of the chips the project runs on: peak FLOP rates for MFU
(benchmarks/train_step.py), and the TPU chips' and GPUs' memory and interconnect for the pod
plan (scale/pod_plan.py), with the target description the GPU compiler compiles for."""

import dataclasses
import time

import jax
import jax.numpy as jnp

# Dense peak TFLOP/s per chip from the vendors' data sheets: (bfloat16, float32). Float32 on
# GPUs is the non-tensor-core rate (XLA's default float32 matmuls on GPU may use TF32).
PEAK_TFLOPS = {
    'TPU v4': (275.0, 275.0 / 4), 'TPU v5 lite': (197.0, 197.0 / 4), 'TPU v5p': (459.0, 459.0 / 4),
    'TPU v6 lite': (918.0, 918.0 / 4),
    'A100': (312.0, 19.5), 'H100': (989.0, 67.0), 'H200': (989.0, 67.0),
}

# Each hop of a collective over ICI costs about 1 us whatever its size ("How to Scale Your
# Model", jax-ml.github.io/scaling-book/sharding, "A note on ICI latency").
ICI_HOP_LATENCY_S = 1e-6


@dataclasses.dataclass(frozen=True)
class Chip:
  """What the pod plan needs of a chip: a TPU's from cloud.google.com/tpu/docs/<generation>,
  a GPU's from its vendor's data sheet."""
  peak_key: str  # Its PEAK_TFLOPS entry.
  hbm_bytes: float
  hbm_bytes_per_s: float
  # All-reduce bandwidth per chip: the data sheet's all-reduce bandwidth per pod over the
  # pod's chips, where the sheet gives it.
  all_reduce_bytes_per_s: float


TPU_CHIPS = {
    # v4: 32 GiB HBM2 at 1200 GB/s; all-reduce 1.1 PB/s over a pod of 4,096 chips.
    'v4': Chip('TPU v4', 32 * 2**30, 1200e9, 1.1e15 / 4096),
    # v5e: 16 GB HBM2 at 819 GB/s; all-reduce 51.2 TB/s over a pod of 256 chips.
    'v5e': Chip('TPU v5 lite', 16e9, 819e9, 51.2e12 / 256),
    # v5p: 95 GiB HBM2e at 2765 GB/s; no pod all-reduce figure: half the 1200 GB/s of
    # bidirectional ICI per chip, the ratio of the v5e (400 -> 200) and v6e (800 -> 400) sheets.
    'v5p': Chip('TPU v5p', 95 * 2**30, 2765e9, 1200e9 / 2),
    # v6e: 32 GB HBM at 1638 GB/s; all-reduce 102.4 TB/s over a pod of 256 chips.
    'v6e': Chip('TPU v6 lite', 32e9, 1638e9, 102.4e12 / 256),
}


@dataclasses.dataclass(frozen=True)
class Host:
  """A machine the input pipeline runs on: its accelerators and the vCPUs that feed them."""
  chips: int
  vcpus: int
  peak_key: str  # The chips' PEAK_TFLOPS entry.


# From the machine types' data sheets (cloud.google.com/tpu/docs/<generation>, Compute
# Engine's accelerator-optimized machines); v5e's 4-chip host is the one of its multi-host
# slices (the 8-chip one has 224 vCPUs: the same per chip).
HOSTS = {
    'TPU v4 (4 chips)': Host(4, 240, 'TPU v4'),
    'TPU v5e (ct5lp-hightpu-4t)': Host(4, 112, 'TPU v5 lite'),
    'TPU v5p (4 chips)': Host(4, 208, 'TPU v5p'),
    '8 x H100 (a3-highgpu-8g)': Host(8, 208, 'H100'),
}

# H100 SXM5 (NVIDIA H100 Tensor Core GPU data sheet): 80 GB HBM3 at 3.35 TB/s; NVLink 900 GB/s
# per GPU, both directions together, so 450 GB/s each way: a ring all-reduce's bandwidth
# within a host of 8 (NVSwitch).
H100 = Chip('H100', 80e9, 3.35e12, 450e9)
# Between hosts: one 400 Gb/s InfiniBand NDR port (ConnectX-7) per GPU, as in a DGX H100.
H100_NETWORK_BYTES_PER_S = 400e9 / 8
# NCCL's own cost model of a ring all-reduce (nccl src/graph/tuning.cc, the LL protocol that
# small messages such as BatchNorm statistics take): a base latency, plus one per ring step
# over NVLink or over the network.
NCCL_BASE_LATENCY_S = 3.6e-6
NCCL_NVLINK_STEP_LATENCY_S = 0.4e-6
NCCL_NETWORK_STEP_LATENCY_S = 0.9e-6

# The target the GPU compiler compiles for where no GPU is attached: XLA's H100 SXM spec
# (openxla/xla xla/backends/gpu/target_config/specs/h100_sxm.txtpb), the fields that
# jaxlib 0.10.2's GpuTargetConfigProto knows, with cuDNN 9.
H100_TARGET_CONFIG = """
gpu_device_info {
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: 3352320000000
  l2_cache_size: 52428800
  clock_rate_ghz: 1.98
  device_memory_size: 84942979072
  shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 }
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 8 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""


def measured_cpu_peak_tflops(size: int = 1024, repeats: int = 5) -> float:
  """This CPU's float32 matmul rate through XLA (all its cores), best of `repeats`."""
  a = jnp.ones((size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x).lower(a).compile()
  matmul(a).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    started = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - started)
  return 2 * size**3 / best / 1e12


def data_sheet_peak_tflops(kind: str, dtype: str) -> float:
  """The PEAK_TFLOPS entry of `kind` for `dtype` (bfloat16, else the float32 rate)."""
  bf16, fp32 = PEAK_TFLOPS[kind]
  return bf16 if dtype == 'bfloat16' else fp32


def peak_tflops(device, dtype: str) -> tuple[float, str]:
  """(peak TFLOP/s of one device for `dtype`, where the figure comes from); on a CPU, the
  measured rate shared among the host's devices."""
  if device.platform == 'cpu':
    return measured_cpu_peak_tflops() / jax.local_device_count(), 'measured float32 matmul'
  for kind in PEAK_TFLOPS:
    if kind.lower() in device.device_kind.lower():
      return data_sheet_peak_tflops(kind, dtype), f'{kind} data sheet'
  return float('nan'), f'no peak known for {device.device_kind}'
