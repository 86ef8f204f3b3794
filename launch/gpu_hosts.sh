#!/usr/bin/env bash
# Pretrains on one or more GPU hosts (all GPUs of each host). Run this same script on every
# host, with the same COORDINATOR (host 0's address:port) and a distinct PROCESS_ID:
#
#   # host 0                                   # host 1
#   NUM_HOSTS=2 PROCESS_ID=0 \                 NUM_HOSTS=2 PROCESS_ID=1 \
#   COORDINATOR=10.0.0.1:1234 \                COORDINATOR=10.0.0.1:1234 \
#   WORKDIR=/shared/simsiam launch/gpu_hosts.sh   WORKDIR=/shared/simsiam launch/gpu_hosts.sh
#
# One host alone needs only WORKDIR. Under SLURM, `srun launch/gpu_hosts.sh` works without
# COORDINATOR / PROCESS_ID (JAX reads SLURM's variables). WORKDIR must be shared storage.
# CONFIG picks the run (default configs/imagenet.py, SimSiam); the other methods of the
# paper's Table 4: configs/simclr.py, configs/moco_v2.py, configs/byol.py, configs/swav.py
# (SimCLR, BYOL and SwAV keep their papers' batch of 4096, trained there on 32 or more
# accelerators; `--config.batch_size` scales the lr along with it).
# Install once per host: pip install -r requirements.txt 'jax[cuda12]==0.10.2'
set -euo pipefail
cd "$(dirname "$0")/.."
: "${WORKDIR:?set WORKDIR}"
CONFIG="${CONFIG:-configs/imagenet.py}"
PYTHON="${PYTHON:-python3}"

if [[ -n "${COORDINATOR:-}" ]]; then
  export SIMSIAM_DISTRIBUTED=1 JAX_COORDINATOR_ADDRESS="$COORDINATOR"
  export JAX_NUM_PROCESSES="${NUM_HOSTS:?set NUM_HOSTS}" JAX_PROCESS_ID="${PROCESS_ID:?set PROCESS_ID}"
elif [[ -n "${SLURM_JOB_ID:-}" ]]; then
  export SIMSIAM_DISTRIBUTED=1
fi
# TensorFlow only feeds data; keep its hands off the GPUs' memory.
export TF_FORCE_GPU_ALLOW_GROWTH=true
exec "$PYTHON" -m simsiam_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
