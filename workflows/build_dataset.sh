#!/usr/bin/env bash
# One-machine build with the full (GPU) profile, logging to OUT/build.log.
#   workflows/build_dataset.sh /data/raw /data/emilia-out
set -euo pipefail
IN=${1:?input folder}
OUT=${2:?output folder}
mkdir -p "$OUT"
emilia-pipe models verify --profile full
emilia-pipe run "$IN" -o "$OUT" --profile full "${@:3}" 2>&1 | tee "$OUT/build.log"
