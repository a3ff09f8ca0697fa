#!/usr/bin/env bash
# GPU figures on the lent offline machine (packs from train/pack_for_device.py; 64 MiB per call, so chain calls
# back to back while the machine is warm):
#   bash bench/device_bench.sh stash PART   copy .stash/PART into /root/stash
#   (a part plus the tracked tree must stay under 64 MiB: MiniLM goes as m1a + m1b, `split -b 25M` halves of its
#   model.safetensors joined on the machine with `cat part.aa part.ab > minilm/model.safetensors`)
#   (w, m1a, m1b: `python -m train.pack_for_device --bench`, after
#   `pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64
#   --platform manylinux2014_x86_64 -d .whl/bench soundfile cffi pycparser` and the pure-Python wheels named in
#   train/device_job.sh deps into .whl/bench/wheels)
#   bash bench/device_bench.sh infer        bench/inference.py on CUDA (needs parts p1 + a)  -> $OUT/infer_gpu.json
#   bash bench/device_bench.sh infer2       a shorter re-run with a profile + the batch CLI (parts p1 + a)
#   bash bench/device_bench.sh infer3       issue 16: fast path vs plain encoder, step by step (parts w, r, m1, m2)
#   bash bench/device_bench.sh infer5       infer4 + the step-by-step timing of one call (--stages) and torch.compile
#   bash bench/device_bench.sh infer6       flash varlen attention vs masked SDPA x each compile mode (parts w, r, m1, m2)
#   bash bench/device_bench.sh infer7       the shipped path end to end: side-stream copy, group sizes (w, r, m1a, m1b)
#   bash bench/device_bench.sh infer8       A/B, twice: graphs vs packed for small batches (w, m1a, m1b)
#   bash bench/device_bench.sh final        issue 16's GPU rows, four runs, order alternated, ratios (w, m1a, m1b)
#   bash bench/device_bench.sh cudatests    the CUDA tests: fast path, batch equals single, cuDNN off, DDP (w, r, m1a, m1b)
#   bash bench/device_bench.sh train        bench/train.py + bench/retrain_gain.py (needs p1, a, p3) -> $OUT
#   bash bench/device_bench.sh train2       bench/train.py with batches built in the loop vs by loader threads,
#                                           then a short profiled run (needs p1, a, p3) -> $OUT
#   bash bench/device_bench.sh train3       bench/train.py: length buckets off / on, then batch 64 + 64 replay
#   bash bench/device_bench.sh acc1         accelerate launch on one GPU (bf16): stopped + resumed vs uninterrupted
#   bash bench/device_bench.sh live         bench/streaming.py (live voice latency) on CUDA (parts p1, a, live)
set -uo pipefail
STASH=${STASH:-/root/stash}
setup() {
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site "$STASH"/*.whl
  export PYTHONPATH="/tmp/site:$PWD" EMO_SHARED_DATA="$STASH/data" EMO_CACHE=/root/cache HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  if [ ! -d /root/model ]; then
    cp -r models/default /root/model
    python3 - <<EOF
import json; p = "/root/model/config.json"; c = json.load(open(p))
c.update(speech_backbone="$STASH/whisper-base", text_backbone="$STASH/minilm"); json.dump(c, open(p, "w"), indent=2)
EOF
  fi
}
case "$1" in
  stash)
    mkdir -p "$STASH" && cp -r ".stash/$2/." "$STASH/" && du -sh "$STASH"/* ;;
  infer)
    setup
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
    python3 bench/inference.py --model /root/model --device cuda --compile --out "$OUT/infer_gpu.json" 2>&1 | tee "$OUT/infer_gpu.log" ;;
  infer2)  # after a change: the goal rows again, a profile of one big batch, and the batch CLI on 120 files
    setup
    python3 bench/inference.py --model /root/model --device cuda --batches 1,64,256 --seconds 4,30 --profile \
      --out "$OUT/infer_gpu2.json" 2>&1 | grep -v '^{.impl' | tee "$OUT/infer_gpu2.log"
    TIMEFORMAT='batch CLI wall incl. model load: %R s'
    { time EMO_ASR=0 python3 -m backend.predict --batch "$STASH/data/ravdess-speech-16k" --out /tmp/bp.parquet \
        --model /root/model --workers 4 2>&1 | grep -v 'it/s\]' | tail -2 ; } 2>&1 | tee "$OUT/batch_cli.log" ;;
  infer3)  # issue 16: the fast path beside the plain encoder, each step apart, accuracy per step; the GPU tests
    # (parts w, r, m1, m2 of train/pack_for_device.py --speech / --adapt)
    bash train/device_job.sh deps && setup
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
    python3 bench/inference.py --model /root/model --device cuda --impls naive,naive_trim,eager,ours,plain,plain30 \
      --batches 1,64,256,1024 --seconds 4,30 --naive-max-batch 16 --budget-s 1 --accuracy-data "$STASH/data" \
      --profile --out "$OUT/infer_gpu3.json" 2>&1 | grep -v '^{.impl' | tee "$OUT/infer_gpu3.log"
    python3 bench/batch_vs_single.py --device cuda --data "$STASH/data" --model /root/model 2>&1 | tail -4
    EMO_TEST_MODEL=/root/model python3 -m pytest -q -p no:cacheprovider tests/test_fast_speech.py 2>&1 | tail -4 ;;
  infer4)  # after the first infer3: ours and the plain anchor only, the CUDA test, CTranslate2's CUDA status
    bash train/device_job.sh deps && setup
    python3 bench/inference.py --model /root/model --device cuda --impls ours,plain,plain30 --batches 1,256,1024 \
      --seconds 4,30 --budget-s 1 --out "$OUT/infer_gpu4.json" 2>&1 | grep -v '^{.impl' | tee "$OUT/infer_gpu4.log"
    EMO_TEST_MODEL=/root/model python3 -m pytest -q -p no:cacheprovider tests/test_fast_speech.py 2>&1 | tail -3
    python3 -m pip install -q --no-index --no-deps --target /tmp/site "$STASH"/ct2/*.whl && python3 -c \
      "import ctranslate2; from backend.asr import ct2_cuda_status; print('ctranslate2', ctranslate2.__version__, 'CUDA devices', ctranslate2.get_cuda_device_count(), '->', ct2_cuda_status())"
    ls /opt/torch/.venv/lib/python3.12/site-packages/nvidia 2>/dev/null | tr '\n' ' ' ;;
  infer5)  # issue 16, after removing the host syncs: where a call's time goes (--stages: padding, copy, forward,
    # whole call, ours beside plain, and the forward under torch.compile), the goal rows, the CUDA tests
    bash train/device_job.sh deps && setup
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,utilization.gpu --format=csv,noheader
    python3 bench/inference.py --model /root/model --device cuda --impls ${IMPLS:-ours,branch,plain,plain30} \
      --batches 1,16,256,1024 --seconds 4,30 --budget-s 1 --stages --profile --accuracy-data "$STASH/data" \
      --out "$OUT/infer_gpu5.json" 2>&1 | grep -v '^{.impl' | tee "$OUT/infer_gpu5.log"
    python3 bench/batch_vs_single.py --device cuda --data "$STASH/data" --model /root/model 2>&1 | tail -3
    EMO_TEST_MODEL=/root/model python3 -m pytest -q -p no:cacheprovider tests/test_fast_speech.py \
      tests/test_batch_equals_single.py 2>&1 | tail -4 ;;
  infer6)  # issue 16: flash varlen attention vs the masked SDPA, each way of compiling (--stages), the CUDA tests
    bash train/device_job.sh deps && setup
    python3 -c "import torch; from backend.fast_speech import _varlen_attn; print('torch', torch.__version__, 'varlen', _varlen_attn())"
    EMO_TEST_MODEL=/root/model python3 -m pytest -q -p no:cacheprovider tests/test_fast_speech.py \
      tests/test_batch_equals_single.py 2>&1 | tail -4
    python3 bench/inference.py --model /root/model --device cuda --impls ${IMPLS:-ours,branch,branch_sdpa,plain} \
      --batches ${BATCHES:-1,16,256,1024} --seconds 4,30 --budget-s 1 --stages --accuracy-data "$STASH/data" \
      --out "$OUT/infer_gpu6.json" 2>&1 | grep -v '^{.impl' | tee "$OUT/infer_gpu6.log"
    python3 bench/batch_vs_single.py --device cuda --data "$STASH/data" --model /root/model 2>&1 | tail -3 ;;
  infer7)  # issue 16: the shipped path end to end: the copy to the GPU on a side stream vs on the compute stream,
    # group sizes, the CUDA tests, the rotation probe (packed vs padded, inputs rotated vs repeated)
    bash train/device_job.sh deps && setup
    EMO_TEST_MODEL=/root/model python3 -m pytest -q -p no:cacheprovider tests/test_fast_speech.py \
      tests/test_batch_equals_single.py 2>&1 | tail -4
    python3 bench/inference.py --model /root/model --device cuda \
      --impls ${IMPLS:-ours,branch,branch@1024,branch@512/64,plain} --batches ${BATCHES:-1,16,256,1024} \
      --seconds 4,30 --budget-s 1 --stages --variants sdpa_eager --accuracy-data "$STASH/data" \
      --out "$OUT/infer_gpu7.json" 2>&1 | grep -v '^{.impl' | tail -5 | cut -c1-300
    python3 -c "import json; d = json.load(open('$OUT/infer_gpu7.json'))
for r in d['rows']: print(r['impl'], r['batch'], r['seconds'], round(r['clips_per_s']), round(r['p50_ms'], 2))"
    python3 bench/rotation_probe.py --model /root/model > "$OUT/rotation_probe.json" 2>"$OUT/rotation_probe.log"
    cut -c1-400 "$OUT/rotation_probe.json"
    python3 bench/batch_vs_single.py --device cuda --data "$STASH/data" --model /root/model 2>&1 | tail -3 ;;
  cudatests)  # the tests that skip without CUDA, on the final tree
    bash train/device_job.sh deps >/dev/null && setup
    EMO_TEST_MODEL=/root/model python3 -m pytest -q -rs -p no:cacheprovider tests/test_fast_speech.py \
      tests/test_batch_equals_single.py tests/test_model_format.py tests/test_retrain_ddp.py 2>&1 | tail -15 ;;
  infer8)  # A/B twice over (run-to-run spread): graphs vs packed at <= 16 clips (the side-copy arm it also ran, as
    # branch_serial, is gone with the side copy: bench/results/inference_h200_ab{1,2}.json)
    bash train/device_job.sh deps >/dev/null && setup
    for rep in 1 2; do
      python3 bench/inference.py --model /root/model --device cuda --impls ${IMPLS:-branch,branch_nographs,plain} \
        --batches 1,16,256,1024 --seconds 4,30 --budget-s 1 --out "$OUT/infer_gpu8_$rep.json" >/dev/null 2>&1
      python3 -c "import json; d = json.load(open('$OUT/infer_gpu8_$rep.json'))
for r in d['rows']: print($rep, r['impl'], r['batch'], r['seconds'], round(r['clips_per_s']), round(r['p50_ms'], 2))"
    done ;;
  final)  # issue 16's GPU goals on the final tree: four runs, impl order alternated (plain first in odd runs), so
    # each configuration has four paired branch / plain ratios; then the summary (bench/gpu_ratios.py)
    bash train/device_job.sh deps >/dev/null && setup
    nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv,noheader
    mkdir -p /root/runs  # runs kept on the machine, so REPS can split them over calls (10 minutes each)
    for rep in ${REPS:-1 2 3 4}; do
      impls=${IMPLS:-ours,branch,plain}; [ $((rep % 2)) = 1 ] && impls=$(echo "$impls" | tr ',' '\n' | tac | paste -sd,)
      python3 bench/inference.py --model /root/model --device cuda --impls "$impls" --batches 1,256,1024 \
        --seconds 4,30 --budget-s 2 --out "/root/runs/infer_final_$rep.json" >/dev/null 2>&1 || echo "run $rep failed"
      cp "/root/runs/infer_final_$rep.json" "$OUT/" && echo "run $rep done at $SECONDS s"
    done
    python3 bench/gpu_ratios.py /root/runs/infer_final_*.json --out "$OUT/gpu_ratios.json" >/dev/null
    python3 -c "import json; d = json.load(open('$OUT/gpu_ratios.json'))
for r in d['rows']: print(r['impl'], r['batch'], r['seconds'], 'x plain', r['over_plain']['runs'], 'clips/s', [round(x) for x in r['clips_per_s']['runs']], 'peak', r['fraction_of_peak'] and r['fraction_of_peak']['runs'])" ;;
  train)
    setup
    EMO_SHARED_DATA="$STASH/data" timeout 300 python3 bench/train.py --model /root/model --data "$STASH/data" \
      --out /tmp/trainbench --corrections 1000 2>&1 | grep -v 'it/s\]' | tee "$OUT/train_bench.log"
    timeout 240 python3 bench/retrain_gain.py --model /root/model --data "$STASH/data" --out /tmp/gain 2>&1 \
      | grep -v 'it/s\]' | tee "$OUT/retrain_gain.log" ;;
  train2)
    setup
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    for w in ${WORKERS:-0 -1}; do
      timeout 200 python3 bench/train.py --model /root/model --data "$STASH/data" --out "/tmp/tb$w" --corrections 1000 \
        --loader-workers "$w" 2>&1 | grep -v 'it/s\]' | tee "$OUT/train_workers$w.log"
    done
    timeout 150 python3 bench/train.py --model /root/model --data "$STASH/data" --out /tmp/tbprof --corrections 300 \
      --epochs 1 --profile > "$OUT/train_profile.log" 2>&1; tail -c 9000 "$OUT/train_profile.log" ;;
  train3)  # length buckets off vs on, and 4x the batch
    setup
    run() { timeout 200 python3 bench/train.py --model /root/model --data "$STASH/data" --corrections 1000 "$@" 2>&1 \
      | grep -v 'it/s\]' | python3 -c "import sys, json; t = sys.stdin.read(); print(t[t.index('{'):])"; }
    run --out /tmp/t0 --bucket-seconds 0 | tee "$OUT/train_bucket0.json"
    run --out /tmp/t1 --bucket-seconds 1 | tee "$OUT/train_bucket1.json"
    run --out /tmp/t2 --bucket-seconds 1 --batch-size 64 --replay-per-batch 64 | tee "$OUT/train_batch128.json" ;;
  acc1)
    setup
    timeout 200 python3 bench/train.py --model /root/model --data "$STASH/data" --out /tmp/fill --corrections 300 \
      --epochs 1 > "$OUT/fill.log" 2>&1
    common="--db /tmp/fill/studio.db --base-model /root/model --data $STASH/data --no-gate --epochs 2 --checkpoint-every 10"
    launch="accelerate launch --num_processes 1 --num_machines 1 --mixed_precision bf16 --dynamo_backend no -m train.retrain"
    $launch $common --data-dir /tmp/d1 --out /tmp/acc-full > "$OUT/acc_full.log" 2>&1
    $launch $common --data-dir /tmp/d2 --out /tmp/acc-resumed --stop-after-steps 17 > "$OUT/acc_stop.log" 2>&1
    $launch $common --data-dir /tmp/d2 --out /tmp/acc-resumed --resume > "$OUT/acc_resume.log" 2>&1
    python3 -c "
from safetensors.torch import load_file
a = load_file('/tmp/acc-full/challenger/model.safetensors'); b = load_file('/tmp/acc-resumed/challenger/model.safetensors')
print({'max_abs_diff': max((a[k].float() - b[k].float()).abs().max().item() for k in a), 'tensors': len(a)})"
    for f in "$OUT"/acc_*.log; do echo "== $f"; grep -v 'it/s\]' "$f" | tail -n 2 | cut -c1-600; done ;;
  live)  # bench/streaming.py on CUDA without Gradio (parts p1 + a, and `live`: see bench/streaming.py's docstring)
    setup
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    EMO_DEVICE=cuda python3 bench/streaming.py --no-app --model /root/model --repeat 3 --out "$OUT/live_gpu.json" 2>&1 \
      | grep -v 'it/s\]' | tail -n 80 ;;
esac
