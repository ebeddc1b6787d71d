#!/usr/bin/env bash
# Submit a dataset build to a running Ray cluster; extra arguments go to `emilia-pipe run`.
#   RAY_ADDRESS=http://head:8265 workflows/ray_cluster_job.sh /data/raw /data/emilia-out --set run.max_files_in_flight=64
set -euo pipefail
IN=${1:?input folder}
OUT=${2:?output folder}
: "${RAY_ADDRESS:?set RAY_ADDRESS to the cluster dashboard, e.g. http://head:8265}"
ray job submit --address "$RAY_ADDRESS" --working-dir "$(dirname "$0")/.." -- \
  emilia-pipe run "$IN" -o "$OUT" --profile full --ray-address auto "${@:3}"
