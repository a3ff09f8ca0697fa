#!/usr/bin/env bash
# Runs on the lent offline GPU machine (see train/pack_for_device.py). Each call carries one packed part:
#   bash train/device_job.sh stash PART     copy .stash/PART into /root/stash (the machine stays warm between calls)
#   bash train/device_job.sh train          train every branch in parallel on the GPU; results in $OUT
#   VARIANTS="name:args;..." bash train/device_job.sh speech
#                                           speech variants in parallel (parts w, r, s1-s3, k of
#                                           python -m train.pack_for_device --speech); results in $OUT/speech.tgz
set -euo pipefail
STASH=${STASH:-/root/stash}
install_deps() {  # soundfile and the pure-Python wheels of part m2 that this machine lacks, into /tmp/site
  mkdir -p /tmp/site
  python3 -c "import soundfile" 2>/dev/null || python3 -m pip install -q --no-index --no-deps --target /tmp/site "$STASH"/*.whl
  need=""
  for pair in sqlite_utils:sqlite_utils sqlite_fts4:sqlite_fts4 click_default_group:click_default_group \
      tabulate:tabulate pluggy:pluggy dateutil:python_dateutil six:six click:click accelerate:accelerate \
      krippendorff:krippendorff filelock:filelock tqdm:tqdm psutil:psutil nrclex:nrclex \
      iniconfig:iniconfig pytest:pytest; do
    python3 -c "import ${pair%%:*}" 2>/dev/null || need="$need $(ls "$STASH"/wheels/"${pair#*:}"-*.whl)"
  done
  # shellcheck disable=SC2086
  [ -z "$need" ] || { echo "installing:$need"; python3 -m pip install -q --no-index --no-deps --target /tmp/site $need; }
}
case "$1" in
  deps)
    install_deps ;;
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
  speech)
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$STASH"/*.whl
    export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2
    export PYTHONPATH="/tmp/site:$PWD" EMO_SHARED_DATA="$STASH/data" EMO_CACHE=/root/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    run="$OUT/speech"; mkdir -p "$run"
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    fit="timeout ${LIMIT:-500} python3 -m train.fit_default train --branch speech --out $run --device cuda \
      --backbone $STASH/whisper-base --data $STASH/data --codecs $STASH/codecs --epochs ${EPOCHS:-15}"
    IFS=';' read -ra specs <<< "$VARIANTS"
    for spec in "${specs[@]}"; do
      name="${spec%%:*}"; args="${spec#*:}"
      # shellcheck disable=SC2086
      $fit --name "$name" $args > "$run/$name.log" 2>&1 &
    done
    ( while sleep 20; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) > "$run/gpu.log" &
    monitor=$!
    fails=0; for j in $(jobs -p); do [ "$j" = "$monitor" ] || wait "$j" || fails=$((fails+1)); done
    kill "$monitor" || true
    grep -h '^{' "$run"/*.log || true
    for f in "$run"/*.log; do echo "== $f"; grep -v 'it/s' "$f" | grep -v Loading | tail -n 4 | cut -c1-400; done
    mkdir -p /root/runs && cp -r "$run" "/root/runs/speech-$(date +%s)"  # outlives this call's $OUT
    for name in ${SHIP:-}; do cp "$run/$name.safetensors" "$OUT/"; done  # files come back at most 16 MB each
    cd "$OUT" && tar czf results.tgz --exclude='*.safetensors' speech && rm -rf speech && ls -la "$OUT"
    exit "$fails" ;;
  calibrate)  # dev-mix logits of the model under the mix conditions (parts w, r, s1-s3, k2) -> $OUT
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$STASH"/*.whl 2>/dev/null
    export PYTHONPATH="/tmp/site:$PWD" EMO_CACHE=/root/cache HF_HUB_OFFLINE=1
    python3 -m train.speech_calibration --model "${MODEL:-models/default}" --data "$STASH/data" --device cuda \
      --codecs "$STASH/codecs" --speech-backbone "$STASH/whisper-base" --cache-logits "$OUT/devmix.npz" \
      > "$OUT/calibration.json" && cut -c1-600 "$OUT/calibration.json" ;;
  batch-vs-single)  # bf16 on the GPU: a clip alone vs in mixed batches (needs parts w, r)
    export PYTHONPATH="/tmp/site:$PWD" EMO_CACHE=/root/cache HF_HUB_OFFLINE=1
    python3 bench/batch_vs_single.py --device cuda --data "$STASH/data" --speech-backbone "$STASH/whisper-base" \
      --model "${MODEL:-models/default}" ;;
  adapt)  # bench/adapt_ased.py, recipes x seeds in parallel (parts w, r, s1-s3 of --speech; m1, m2 of --adapt)
    # RECIPES="name:bench args;..." SEEDS="0 1 2" LIMIT=seconds; runs live in $ROOT/adapt (--resume continues them)
    ROOT=${ADAPT_ROOT:-/root}; mkdir -p "$ROOT/adapt" /tmp/site
    install_deps
    export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 TOKENIZERS_PARALLELISM=false
    export PYTHONPATH="/tmp/site:$PWD" EMO_CACHE="$ROOT/cache" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
    python3 - "$STASH" "$ROOT/v1" <<'PY'
import json, shutil, sys
from pathlib import Path
stash, v1 = Path(sys.argv[1]), Path(sys.argv[2])
if not v1.exists():
    shutil.copytree(stash / "base-model", v1)
    config = json.loads((v1 / "config.json").read_text())
    config.update(speech_backbone=str(stash / "whisper-base"), text_backbone=str(stash / "minilm"))
    (v1 / "config.json").write_text(json.dumps(config, indent=2))
from backend.model import EmotionModel  # warm the lexicon cache once, before the runs share it
from backend.settings import load_settings
EmotionModel.from_pretrained(v1, cache=load_settings().cache, device="cuda" if __import__("torch").cuda.is_available() else "cpu")
PY
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    IFS=';' read -ra recipes <<< "${RECIPES:-default:}"
    for spec in "${recipes[@]}"; do
      name="${spec%%:*}"; args="${spec#*:}"
      for seed in ${SEEDS:-0 1 2}; do
        # eval: a recipe's args may quote, e.g. B:--retrain-args='--replay-distill=0.5 --replay-per-batch=48'
        eval "timeout ${LIMIT:-500} python3 bench/adapt_ased.py --base-model $ROOT/v1 --data $STASH/data \
          --out $ROOT/adapt/$name --json $ROOT/adapt/$name-s$seed.json --seeds $seed --resume $args \
          > $ROOT/adapt/$name-s$seed.log 2>&1 &"
      done
    done
    ( while sleep 30; do nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader; done ) \
      > "$ROOT/adapt/gpu.log" 2>/dev/null &
    monitor=$!
    for j in $(jobs -p); do [ "$j" = "$monitor" ] || wait "$j" || true; done
    kill "$monitor" || true
    mkdir -p "$OUT/adapt"
    cp "$ROOT"/adapt/*.json "$OUT/adapt/" 2>/dev/null || true
    for f in "$ROOT"/adapt/*.log; do { grep -v 'it/s\|Loading' "$f" || true; } | tail -n 30 > "$OUT/adapt/$(basename "$f")"; done
    for f in "$ROOT"/adapt/*/seed*/n*/retrain.log; do  # the last lines of every retraining run, named by its path
      if [ -f "$f" ]; then tail -n 40 "$f" > "$OUT/adapt/retrain_$(echo "${f#"$ROOT"/adapt/}" | tr '/' '_')"; fi
    done
    cd "$OUT" && tar czf adapt.tgz adapt && rm -rf adapt && ls -la
    grep -h "corrections:" "$ROOT"/adapt/*.log | tail -n 40 || true ;;
esac
