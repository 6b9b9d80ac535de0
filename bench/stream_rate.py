"""Streaming `mtl predict corpus.parquet --out DIR` as a user runs it (a whole process), and its rate once started.

    python bench/stream_rate.py --model CKPT [--n 100000] [--device cuda] [--chunk-size 10000] [--pipeline OPTS]
                                [--encode-json bench/results/encode-cuda.json] [--json PATH]

Texts as bench_encode's (TweetEval where present, else generated tweet-length sentences), in one Parquet
file. Reports the whole run (start-up included) and the rate once started: the rows after the first shard
over the time from the first shard to the last (shard files' modification times), so the model load and
the first chunk's warm-up are left out. With --encode-json, that rate is divided by the same run's
`mtl-default` encode rate (the issue's target: >= 80 %). `--pipeline` runs with a non-default
`torch_encoder.Pipeline` (e.g. attention=varlen), through `python -c` so the CLI is otherwise untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_encode import bench_texts, machine  # noqa: E402
from bench_host import shard_rate  # noqa: E402

WRAPPER = ("import sys; from mtl.engine import torch_encoder as te; te.PIPELINE = te.Pipeline.parse(sys.argv[1]); "
           "from mtl.cli import main; raise SystemExit(main(sys.argv[2:]))")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--backend", default="auto", help="mtl's --backend (auto: fp16 through the torch pipeline on CUDA)")
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--pipeline", default="", help="torch_encoder.Pipeline options, e.g. attention=varlen")
    ap.add_argument("--cache", action="store_true", help="pass --cache (keep the vectors in the embedding cache)")
    ap.add_argument("--encode-json", default=None, help="bench_encode results of the same machine: the rate to compare with")
    ap.add_argument("--json", default=None, help="append the result to this JSON list (default bench/results/stream-<device>.json)")
    a = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    texts, source, _ = bench_texts(a.n, "cuda")
    with tempfile.TemporaryDirectory(prefix="mtl-stream-") as t:
        tmp = Path(t)
        corpus, out = tmp / "corpus.parquet", tmp / "preds"
        pq.write_table(pa.table({"text": texts}), corpus, row_group_size=10_000)
        args = ["predict", str(corpus), "--out", str(out), "--device", a.device, "--backend", a.backend, "--model", a.model, "--cache-dir", str(tmp / "cache")]
        args += (["--chunk-size", str(a.chunk_size)] if a.chunk_size else []) + (["--cache"] if a.cache else [])
        cmd = [sys.executable, "-c", WRAPPER, a.pipeline, *args] if a.pipeline else [sys.executable, "-m", "mtl", *args]
        gnu = ["/usr/bin/time", "-f", "MAXRSS_KB=%M"] if os.path.exists("/usr/bin/time") else []
        t0 = time.perf_counter()
        r = subprocess.run(gnu + cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        wall = time.perf_counter() - t0
        if r.returncode:
            raise SystemExit(f"mtl predict failed ({r.returncode}):\n{r.stderr[-3000:]}")
        once = shard_rate(out)
        rows = pq.read_table(out, columns=["text"]).num_rows
        shards = len(list(out.glob("part-*.parquet")))
    res = {"n": len(texts), "texts": source, "device": a.device, "backend": a.backend, "chunk_size": a.chunk_size or "default", "pipeline": a.pipeline or "default",
           "cache": a.cache, "rows_out": rows, "shards": shards, "whole_s": round(wall, 2), "whole_per_s": round(len(texts) / wall),
           "once_started_per_s": once and round(once), "mtl_says": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "",
           "machine": machine()}
    if "MAXRSS_KB=" in r.stderr:
        res["peak_rss_mb"] = round(int(r.stderr.rsplit("MAXRSS_KB=", 1)[1].split()[0]) / 1024)
        res["mtl_says"] = next((line for line in reversed(r.stderr.splitlines()) if "rows/s" in line), "")
    msg = (f"stream predict {len(texts):,} rows (backend {a.backend}, {res['chunk_size']} chunks, pipeline {res['pipeline']}, cache {'on' if a.cache else 'off'}): "
           f"whole process {wall:.1f} s = {res['whole_per_s']:,}/s; once started " + (f"{once:,.0f}/s" if once else "n/a (fewer than 2 shards)"))
    if a.encode_json and Path(a.encode_json).is_file():
        enc = json.loads(Path(a.encode_json).read_text())["modes"].get("mtl-default", {})
        if "sent_per_s" in enc and once:
            res["encode_mtl_default_per_s"] = round(enc["sent_per_s"])
            res["once_started_x_encode"] = round(once / enc["sent_per_s"], 3)
            msg += f" = {res['once_started_x_encode']:.0%} of mtl-default encode ({enc['sent_per_s']:,.0f}/s; target >= 80 %)"
    print(msg, flush=True)
    path = Path(a.json or ROOT / f"bench/results/stream-{a.device}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(path.read_text()) if path.is_file() else []
    path.write_text(json.dumps((old if isinstance(old, list) else [old]) + [res], indent=2))


if __name__ == "__main__":
    main()
