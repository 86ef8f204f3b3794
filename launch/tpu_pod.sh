#!/usr/bin/env bash
# Pretrains on a Cloud TPU VM pod slice: every worker runs the same command, JAX finds the
# other workers by itself, and each reads its own shard of the data.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b WORKDIR=gs://my-bucket/simsiam \
#   DATA_DIR=gs://my-bucket/tensorflow_datasets launch/tpu_pod.sh [--config.xxx=...]
#
# CONFIG picks the run (default configs/imagenet.py, SimSiam). The other methods of the
# paper's Table 4: CONFIG=configs/simclr.py, configs/moco_v2.py, configs/byol.py or
# configs/swav.py. SimCLR, BYOL and SwAV keep their papers' batch of 4096 (trained there on
# 32 to 512 accelerators), MoCo v2 and SimSiam 256 and 512; the global batch must divide by
# the number of chips.
#
# First `launch/tpu_pod.sh setup` copies this checkout (committed files) to every worker at
# ~/simsiam_jax and installs it there.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR (gs://...)}"
: "${DATA_DIR:?set DATA_DIR (gs://.../tensorflow_datasets)}"
CONFIG="${CONFIG:-configs/imagenet.py}"

on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$1"
}

if [[ "${1:-}" == "setup" ]]; then
  archive="$(mktemp -d)/simsiam_jax.tar.gz"
  git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$archive" HEAD
  gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:~/" --zone "$ZONE" --worker=all
  on_all_workers "mkdir -p ~/simsiam_jax && tar -xzf ~/simsiam_jax.tar.gz -C ~/simsiam_jax && \
    cd ~/simsiam_jax && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt \
    && .venv/bin/pip install -q 'jax[tpu]==0.10.2'"
  exit 0
fi

on_all_workers "cd ~/simsiam_jax && SIMSIAM_DISTRIBUTED=1 nohup .venv/bin/python -m simsiam_jax.main \
  --config=$CONFIG --workdir=$WORKDIR --config.data.data_dir=$DATA_DIR $* \
  > ~/simsiam_train.log 2>&1 &"
echo "Started on all workers of $TPU_NAME; logs in ~/simsiam_train.log on each, summaries in $WORKDIR."
