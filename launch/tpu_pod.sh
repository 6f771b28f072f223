#!/usr/bin/env bash
# TPU VM pod: create, copy the code, install, run on all workers, collect logs.
#   launch/tpu_pod.sh NAME ZONE ACCELERATOR create|setup|run|logs|delete [trainer flags...]
#   e.g. launch/tpu_pod.sh mgca us-central2-b v4-64 run --config=configs/cc3m.py --workdir=/shared/runs/run1 ...
# The workdir and --config.data_dir must be a path mounted on every worker (gs:// is not supported yet).
# jax.distributed.initialize() needs no arguments on TPU pods.
set -euo pipefail
name=$1 zone=$2 accel=$3 action=$4; shift 4
ssh_all() { gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$1"; }
case $action in
  create) gcloud compute tpus tpu-vm create "$name" --zone "$zone" --accelerator-type "$accel" \
            --version tpu-ubuntu2204-base ;;
  # The ubuntu-2204 image has Python 3.10; setup.py needs 3.11 (deadsnakes), in ~/venv.
  setup)  gcloud compute tpus tpu-vm scp --recurse --zone "$zone" --worker=all . "$name":~/mgca_jax
          ssh_all "sudo add-apt-repository -y ppa:deadsnakes/ppa && sudo apt-get install -y -qq \
                   python3.11 python3.11-venv && python3.11 -m venv ~/venv && cd ~/mgca_jax && \
                   ~/venv/bin/pip install -q -c requirements.lock -e . 'jax[tpu]==0.10.2'" ;;
  run)    ssh_all "cd ~/mgca_jax && nohup ~/venv/bin/python -m mgca_jax.main $* > ~/train.log 2>&1 &" ;;
  logs)   mkdir -p logs/"$name"
          for w in $(seq 0 $(( $(gcloud compute tpus tpu-vm describe "$name" --zone "$zone" \
                --format='value(networkEndpoints.len())') - 1 ))); do
            gcloud compute tpus tpu-vm scp --zone "$zone" --worker="$w" "$name":~/train.log logs/"$name"/worker$w.log
          done ;;
  delete) gcloud compute tpus tpu-vm delete "$name" --zone "$zone" --quiet ;;
  *) echo "error: unknown action '$action' (create|setup|run|logs|delete)" >&2; exit 2 ;;
esac
