#!/usr/bin/env bash
# Runs on the lent offline GPU machine (see train/pack_for_device.py). Each call carries one packed part:
#   bash train/device_job.sh stash PART     copy .stash/PART into /root/stash (the machine stays warm between calls)
#   bash train/device_job.sh train          train every branch in parallel on the GPU; results in $OUT
set -euo pipefail
STASH=/root/stash
case "$1" in
  stash)
    mkdir -p "$STASH" && cp -r ".stash/$2/." "$STASH/" && du -sh "$STASH"/* ;;
  train)
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$STASH"/*.whl
    export OMP_NUM_THREADS=3 MKL_NUM_THREADS=3 OPENBLAS_NUM_THREADS=3  # 4 trainers share 16 cores
    export PYTHONPATH="/tmp/site:$PWD" EMO_SHARED_DATA="$STASH/data" EMO_CACHE=/root/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    run="$OUT/run"; mkdir -p "$run"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    fit="timeout 530 python3 -m train.fit_default train --out $run --device cuda"
    $fit --branch face --epochs "${FACE_EPOCHS:-45}" > "$run/face.log" 2>&1 &
    $fit --branch text --text-backbone "$STASH/minilm" --epochs "${TEXT_EPOCHS:-2}" > "$run/text.log" 2>&1 &
    # the backbone comparison (frozen/LoRA, trimmed/30 s padded) ran before: SPEECH_VARIANTS=1 repeats it
    $fit --branch speech --backbone "$STASH/whisper-base" --name speech_lora8 --lora-rank 8 --epochs "${SPEECH_EPOCHS:-24}" > "$run/speech_lora8.log" 2>&1 &
    if [ "${SPEECH_VARIANTS:-0}" = 1 ]; then
      $fit --branch speech --backbone "$STASH/whisper-base" --name speech --epochs "${SPEECH_EPOCHS:-24}" > "$run/speech.log" 2>&1 &
      $fit --branch speech --backbone "$STASH/whisper-base" --name speech_pad30 --pad30 --epochs "${SPEECH_EPOCHS:-24}" > "$run/speech_pad30.log" 2>&1 &
    fi
    ( while sleep 30; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) > "$run/gpu.log" &
    monitor=$!
    fails=0; for j in $(jobs -p); do [ "$j" = "$monitor" ] || wait "$j" || fails=$((fails+1)); done
    kill "$monitor" || true
    grep -h '^{' "$run"/*.log || true
    tail -n 3 "$run"/*.log | grep -v 'it/s' || true
    cd "$OUT" && tar czf run.tgz run && rm -rf run
    exit "$fails" ;;
esac
