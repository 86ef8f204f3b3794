"""Data sheets of the chips the project runs on: peak FLOP rates for MFU
(benchmarks/train_step.py), and the TPU chips' memory and interconnect for the pod plan
(scale/pod_plan.py)."""

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
class TpuChip:
  """What the pod plan needs of a TPU chip, from cloud.google.com/tpu/docs/<generation>."""
  peak_key: str  # Its PEAK_TFLOPS entry.
  hbm_bytes: float
  hbm_bytes_per_s: float
  # All-reduce bandwidth per chip: the data sheet's all-reduce bandwidth per pod over the
  # pod's chips, where the sheet gives it.
  all_reduce_bytes_per_s: float


TPU_CHIPS = {
    # v4: 32 GiB HBM2 at 1200 GB/s; all-reduce 1.1 PB/s over a pod of 4,096 chips.
    'v4': TpuChip('TPU v4', 32 * 2**30, 1200e9, 1.1e15 / 4096),
    # v5e: 16 GB HBM2 at 819 GB/s; all-reduce 51.2 TB/s over a pod of 256 chips.
    'v5e': TpuChip('TPU v5 lite', 16e9, 819e9, 51.2e12 / 256),
    # v5p: 95 GiB HBM2e at 2765 GB/s; no pod all-reduce figure: half the 1200 GB/s of
    # bidirectional ICI per chip, the ratio of the v5e (400 -> 200) and v6e (800 -> 400) sheets.
    'v5p': TpuChip('TPU v5p', 95 * 2**30, 2765e9, 1200e9 / 2),
    # v6e: 32 GB HBM at 1638 GB/s; all-reduce 102.4 TB/s over a pod of 256 chips.
    'v6e': TpuChip('TPU v6 lite', 32e9, 1638e9, 102.4e12 / 256),
}


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
