#!/usr/bin/env bash
# Everything the GPU part of the project measures, in ONE call on a GPU machine (the `device` tool),
# results under $OUT. That machine has torch/transformers/onnxruntime but no package index and no
# weights package, so first, here:  make setup && bash ../shared/tools/device/prepare.sh  (.device/, 46 MB)
# then:  run(command="bash bench/gpu_check.sh", carry=[".device"], timeout_s=540)
# Dry run on a CPU:  PY=.venv/bin/python DEV=cpu N=2000 OUT=/tmp/gpu-dry bash bench/gpu_check.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-check}; N=${N:-50000}; DEV=${DEV:-cuda}; PY=${PY:-python3}
mkdir -p "$OUT"
source .device/env.sh
export MTL_CACHE_DIR=/tmp/mtl-cache PYTHONWARNINGS=ignore
T() { timeout "$@"; }  # every step has its own limit: one hang must not cost the rest of a one-shot call
step() { printf '\n== %s\n' "$*" | tee -a "$OUT/summary.txt"; }
step "machine"; nvidia-smi -L 2>&1 | tee -a "$OUT/summary.txt"; $PY -m mtl info 2>&1 | tee -a "$OUT/summary.txt"
step "gpu tests (pytest -m gpu)"
T 120 $PY -m pytest -q -m gpu tests/test_encoders.py -p no:cacheprovider 2>&1 | tail -5 | tee -a "$OUT/summary.txt"
step "bench: $N texts on $DEV (TweetEval tweets where ../shared/data is present, else generated sentences)"
T 360 $PY bench/bench_encode.py --device "$DEV" --n "$N" --whole-n "${WHOLE_N:-0}" --json "$OUT/encode-$DEV.json" 2>&1 | tee -a "$OUT/summary.txt"
step "mtl train / predict on $DEV"
T 90 $PY -m mtl train --device "$DEV" --out /tmp/m.safetensors --metrics /tmp/m.json 2>&1 | tail -9 | tee -a "$OUT/summary.txt"
echo "The striker scored a wonderful goal" | $PY -m mtl predict - --device "$DEV" --model /tmp/m.safetensors 2>&1 | tee -a "$OUT/summary.txt"
step "streaming mtl predict of $N texts on $DEV (--out, JSONL shards, fresh cache)"
$PY -c "import sys; sys.path.insert(0, 'bench'); from bench_encode import bench_texts; open('/tmp/corpus.txt', 'w').write('\\n'.join(bench_texts($N)[0]) + '\\n')"
s0=$(date +%s.%N)
T 120 $PY -m mtl predict /tmp/corpus.txt --out /tmp/preds --format jsonl --device "$DEV" --model /tmp/m.safetensors --cache-dir /tmp/corpus-cache 2>&1 | tail -2 | tee -a "$OUT/summary.txt"
$PY -c "import sys; n, s = $N, $(date +%s.%N) - $s0; print(f'{n} rows in {s:.1f} s: {n / s:.0f} rows/s, whole process')" | tee -a "$OUT/summary.txt"
step "03_training's cells with device=$DEV (no Jupyter kernel there: the code cells run in one namespace, parameters injected)"
T 120 $PY - "$DEV" <<'PY' 2>&1 | tail -12 | tee -a "$OUT/summary.txt"
import json, sys
cells = [c for c in json.load(open("notebooks/03_training.ipynb"))["cells"] if c["cell_type"] == "code"]
ns = {"display": print}
exec("".join(cells[0]["source"]), ns)
ns.update(device=sys.argv[1], figures_dir="/tmp/nb-figures", model_path="/tmp/nb.safetensors", metrics_path="/tmp/nb.json")
for cell in cells[1:]:
    exec("".join(cell["source"]), ns)
print("03_training ran on", sys.argv[1], {t: round(m["accuracy"], 3) for t, m in ns["result"]["metrics"]["test"].items()})
PY
step "done"
