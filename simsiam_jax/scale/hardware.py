"""Peak FLOP rates of the devices the project runs on, for MFU (benchmarks/train_step.py)."""

import time

import jax
import jax.numpy as jnp

# Dense peak TFLOP/s per chip from the vendors' data sheets: (bfloat16, float32). Float32 on
# GPUs is the non-tensor-core rate (XLA's default float32 matmuls on GPU may use TF32).
PEAK_TFLOPS = {
    'TPU v4': (275.0, 275.0 / 4), 'TPU v5 lite': (197.0, 197.0 / 4), 'TPU v5p': (459.0, 459.0 / 4),
    'A100': (312.0, 19.5), 'H100': (989.0, 67.0), 'H200': (989.0, 67.0),
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
