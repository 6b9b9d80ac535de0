#!/usr/bin/env bash
# Everything the GPU part of the project measures, in ONE call of the device tool; every result under $OUT.
#
# Prepare here, once (the GPU machine reaches no package index and has no weights package):
#     bash ../shared/tools/device/prepare.sh        # writes .device/ (~46 MB, git-ignored): fp16 weights + env.sh
# then one call of the device tool (nothing else needs carrying):
#     run(command="bash bench/gpu_check.sh", carry=[".device"], timeout_s=600)
# Its output_tail ends with summary.txt; the files come back from $OUT (6 files; the tool returns at most 8):
#     summary.txt   what each step printed on stdout, with its exit status and time
#     log.txt       stdout and stderr of every step (tracebacks, warnings)
#     encode-cuda.json, encode-cuda-compile.json, stream-cuda.json, host-cuda.json
#
# Steps, in order; each has its own time limit inside an overall deadline (GPU_CHECK_SECONDS, default 540 s,
# so the call ends within 9 minutes), and a failing or timed-out step does not stop the rest:
#   1 machine        nvidia-smi, mtl info
#   2 encode         bench_encode: ST fp32 batch 32 (the reference), ST at batch 512 (fp32, fp16); mtl's default
#                    `encode` with and without the cache; the torch pipeline's options (packed batches through
#                    SDPA on nested jagged tensors or varlen attention, token budgets); tokeniser; producer.
#                    Cosine and label agreement (default heads, both tasks) against the reference; the targets
#   3 stream         `mtl predict corpus.parquet --out DIR` of N rows as a user runs it; rate once started vs step 2
#   4 tests          pytest -m gpu (tests/test_encoders.py, tests/test_bench.py)
#   5 compile        bench_encode: torch.compile modes, each in its own process, reusing step 2's reference
#   6 host           bench_host: the host-side ceiling (stand-in encoder, no network) on this machine's CPU
#   7 stream again   with the packed pipeline (varlen attention, 64k-token batches), if time is left
# Texts: TweetEval where $MTL_EXTERNAL_DIR holds it (it is not on the GPU machine), else generated tweet-like
# sentences. N: GPU_CHECK_N (default 100000).
#
# Dry run on a CPU (every step runs and writes its files; torch-fp16 becomes torch-fp32, varlen is left out):
#     PATH=$PWD/.venv/bin:$PATH GPU_CHECK_N=1000 GPU_CHECK_CHUNK=200 DEV=cpu OUT=/tmp/gpu-dry GPU_CHECK_SECONDS=7200 GPU_CHECK_SCALE=20 \
#       bash bench/gpu_check.sh
# (GPU_CHECK_SCALE multiplies every step's limit, as a CPU is some 100 times slower at this; GPU_CHECK_CHUNK sets the
# streaming chunk size, so a small N still makes several shards; GPU_CHECK_MODES replaces step 2's mode list.)
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}; N=${GPU_CHECK_N:-100000}; DEV=${DEV:-cuda}
DEADLINE=$(( $(date +%s) + ${GPU_CHECK_SECONDS:-540} )); SCALE=${GPU_CHECK_SCALE:-1}
mkdir -p "$OUT"
S="$OUT/summary.txt"; L="$OUT/log.txt"; : > "$S"; : > "$L"
[ -f .device/env.sh ] && source .device/env.sh   # the weights as /tmp/model, a stand-in weights package, the project on PYTHONPATH
PY=${PY:-python3}
export MTL_CACHE_DIR=${MTL_CACHE_DIR:-/tmp/mtl-gpu-check-cache} PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
WORK=/tmp/mtl-gpu-check-work; rm -rf "$WORK"; mkdir -p "$WORK"
if [ "$DEV" = cuda ]; then P=fp16 B=auto; else P=fp32 B=torch; fi   # B: step 7's backend (a CPU's auto is ONNX)
CHUNK=(${GPU_CHECK_CHUNK:+--chunk-size $GPU_CHECK_CHUNK})   # streaming chunk size: mtl's default unless set
CORE=(st-fp32-b512 mtl-default mtl-default-nocache "torch-$P" "torch-$P+attention=njt" "torch-$P+budget=65536,rows=2048" tokenizer producer)
PACKED="attention=njt"
if [ "$DEV" = cuda ]; then
  CORE=(st-fp32-b512 st-fp16-b512 mtl-default mtl-default-nocache torch-fp16 torch-fp16+attention=njt torch-fp16+attention=varlen
        "torch-fp16+attention=varlen,budget=65536,rows=4096" "torch-fp16+budget=65536,rows=2048"
        "mtl-default-nocache+attention=varlen,budget=65536,rows=4096" tokenizer producer)
  PACKED="attention=varlen,budget=65536,rows=4096"
fi
COMPILE=("torch-$P+compile=default" "torch-$P+compile=reduce-overhead,pad_to=16" "torch-$P+attention=njt,compile=default")
[ -n "${GPU_CHECK_MODES:-}" ] && read -r -a CORE <<< "$GPU_CHECK_MODES"

# step NAME LIMIT CMD...: run CMD under min(LIMIT, time left); stdout to summary and log, stderr to log; never fatal.
step() {
  local name=$1 limit=$(( $2 * SCALE )); shift 2
  local room=$(( DEADLINE - $(date +%s) - 5 ))
  if (( room < 30 )); then echo "== $name: skipped (${room} s left before the deadline)" | tee -a "$S" >> "$L"; return; fi
  (( limit > room )) && limit=$room
  printf '\n== %s (limit %s s): %s\n' "$name" "$limit" "$*" | tee -a "$S" >> "$L"
  local t0=$(date +%s)
  timeout -k 10 "$limit" "$@" 2>> "$L" | tee -a "$L" >> "$S"
  local rc=${PIPESTATUS[0]}
  echo "-- $name: exit $rc$( ((rc == 124)) && echo ' (timed out)') after $(( $(date +%s) - t0 )) s" | tee -a "$S" >> "$L"
}

step "1 machine" 30 bash -c "nvidia-smi -L 2>/dev/null || echo 'no nvidia-smi'; $PY -m mtl info; $PY -c 'from mtl import paths; print(\"N=$N DEV=$DEV; texts:\", \"TweetEval from\" if (paths.EXTERNAL_DIR / \"tweeteval_sentiment_test.csv\").is_file() else \"generated, tweet-like (no\", paths.EXTERNAL_DIR)'"
step "2 encode: ST reference, mtl default, pipeline options" 290 \
  "$PY" bench/bench_encode.py --device "$DEV" --n "$N" --work "$WORK" --json "$OUT/encode-$DEV.json" --whole-n 0 --child-timeout $(( 200 * SCALE )) --modes "${CORE[@]}"
step "3 stream: mtl predict corpus.parquet --out DIR" 80 \
  "$PY" bench/stream_rate.py --model "$WORK/heads.safetensors" --n "$N" --device "$DEV" --encode-json "$OUT/encode-$DEV.json" --json "$OUT/stream-$DEV.json" "${CHUNK[@]}"
step "4 tests: pytest -m gpu" 100 \
  "$PY" -m pytest -q -m gpu -p no:cacheprovider -p no:nbval tests/test_encoders.py tests/test_bench.py
step "5 compile: torch.compile modes, each alone" 130 \
  "$PY" bench/bench_encode.py --device "$DEV" --n "$N" --work "$WORK" --json "$OUT/encode-$DEV-compile.json" --whole-n 0 --child-timeout $(( 100 * SCALE )) --modes "${COMPILE[@]}"
step "6 host-side ceiling (stand-in encoder)" 45 \
  "$PY" bench/bench_host.py --n "$N" --repeats 1 --model "$WORK/heads.safetensors" --json "$OUT/host-$DEV.json"
step "7 stream with $PACKED" 60 \
  "$PY" bench/stream_rate.py --model "$WORK/heads.safetensors" --n "$N" --device "$DEV" --backend "$B" --pipeline "$PACKED" --encode-json "$OUT/encode-$DEV.json" --json "$OUT/stream-$DEV.json" "${CHUNK[@]}"
echo "== done: $(( ${GPU_CHECK_SECONDS:-540} - (DEADLINE - $(date +%s)) )) s in all; files: $(cd "$OUT" && ls | tr '\n' ' ')" | tee -a "$S" >> "$L"
cat "$S"
