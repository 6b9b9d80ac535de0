"""Host-side ceiling: how fast `encode()` and streaming `mtl predict --out` go when the network costs nothing.

    python bench/bench_host.py [--n 100000] [--device cuda|cpu] [--repeats 3] [--model CKPT] [--json PATH]

A stand-in encoder, monkeypatched over `mtl.engine.embed.load_encoder`, returns unit vectors at once:
`instant` without looking at the texts, `tokenising` after running the torch pipeline's producer over
them (`torch_encoder.iter_batches`: Rust tokenisation, length sort, token-budget batches, padding; serial
here, in its own thread on a GPU). `--device cuda` (the default) makes `encode` believe it runs on CUDA
(its call size `TEXTS_PER_CALL['cuda']` and mode torch-fp16) without a GPU. So the figures are what the
non-GPU parts allow the GPU path: backbone_text, hashing, cache reads and writes, heads, Parquet shards.

Measured per stand-in, alternated, medians of --repeats:
  encode nocache     encode(texts, EmbedSpec(cache=False))
  encode cache cold  encode(texts, EmbedSpec()) into an empty cache: every lookup misses, every vector is written
  encode cache warm  the same texts again: every vector comes from the cache
  stream predict     `mtl predict corpus.parquet --out DIR` in this process (cache off, its default): whole
                     run, and once started (rows after the first shard / time from the first shard to the last)
and the stages alone: backbone_text, text_key (SHA-256), tokenisation, the producer, the heads, one Parquet shard.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_encode import bench_texts, heads, machine, prepare_exports  # noqa: E402


class StandIn:
    """An encoder with the real one's interface whose network costs nothing."""

    def __init__(self, tokenise: bool, device: str, dim: int = 384):
        rng = np.random.default_rng(0)
        pool = rng.standard_normal((8192, dim)).astype(np.float32)
        self.pool = pool / np.linalg.norm(pool, axis=1, keepdims=True)
        self.dim, self.tokenise = dim, tokenise
        if tokenise:
            from mtl.engine.backbone import resolve_backbone
            from mtl.engine.tokens import TOKEN_BUDGET, tokenizer
            from mtl.engine.torch_encoder import PIPELINE

            self.tok, self.pipeline, self.budget = tokenizer(resolve_backbone()), PIPELINE, PIPELINE.token_budget or TOKEN_BUDGET[device]

    def encode(self, texts: list[str], span=None) -> np.ndarray:
        if self.tokenise:
            from mtl.engine.torch_encoder import iter_batches

            for _ in iter_batches(texts, self.tok, self.pipeline, self.budget):
                pass
        return self.pool[np.arange(len(texts)) % len(self.pool)]


def shard_rate(out: Path) -> float | None:
    """Rows per second once started: rows after the first shard over the time from the first shard to the last."""
    import pyarrow.parquet as pq

    shards = sorted(out.glob("part-*.parquet"))
    if len(shards) < 2:
        return None
    t = [p.stat().st_mtime_ns / 1e9 for p in shards]
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in shards[1:])
    return rows / max(t[-1] - t[0], 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="the encode path to emulate (no GPU is used)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None, help="checkpoint for the stream's heads (default: train the default recipe here)")
    ap.add_argument("--json", default=None, help="default bench/results/host-<device>.json")
    a = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtl import cli
    from mtl.engine import embed
    from mtl.engine.cache import text_key
    from mtl.engine.embed import EmbedSpec, encode
    from mtl.engine.tokens import backbone_text
    from mtl.heads import predict_proba

    texts, source, _ = bench_texts(a.n, "cuda")
    n = len(texts)
    res: dict = {"n": n, "texts": source, "emulated_device": a.device, "calls_of": embed.TEXTS_PER_CALL.get(a.device), "machine": machine(),
                 "runs": {}, "stages_s": {}}
    print(f"machine: {res['machine']}\n{n:,} texts: {source}; encode() as on {a.device} (calls of {res['calls_of']} texts)", flush=True)
    path = Path(a.json or ROOT / f"bench/results/host-{a.device}.json")
    path.parent.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="mtl-host-") as t:
        tmp = Path(t)
        if not a.model:
            prepare_exports(["onnx"])
        model_path, ckpt = heads(tmp, a.model)  # before the stand-in goes in: training encodes for real
        corpus = tmp / "corpus.parquet"
        pq.write_table(pa.table({"text": texts}), corpus, row_group_size=10_000)

        # the stages alone, on all n texts
        def stage(name, fn):
            t0 = time.perf_counter()
            out = fn()
            res["stages_s"][name] = time.perf_counter() - t0
            return out

        read = stage("backbone_text", lambda: [backbone_text(s) for s in texts])
        stage("text_key", lambda: [text_key(s) for s in read])
        StandIn(True, a.device).encode(read[:64])  # imports torch, loads the tokenizer: not timed
        stage("tokenise (encode_batch)", lambda: StandIn(True, a.device).tok.encode_batch(read))
        stage("producer (iter_batches)", lambda: StandIn(True, a.device).encode(read))
        x = StandIn(False, a.device).encode(read)
        stage("heads (predict_proba)", lambda: predict_proba(ckpt.state, ckpt.tasks, x))
        from mtl.predict import label

        chunk = texts[:10_000]
        pred = label(chunk, lambda good: x[: len(good)], ckpt)
        stage(f"one {len(chunk):,}-row Parquet shard (table + write)", lambda: pq.write_table(pred.table(["corpus.parquet"] * len(chunk)), tmp / "shard.parquet"))
        for k, v in res["stages_s"].items():
            rows = len(chunk) if "shard" in k else n
            print(f"  stage {k:<44} {v:7.3f} s  ({rows / max(v, 1e-9):>10,.0f} texts/s)", flush=True)

        # the stand-in goes in: every encoder `encode` loads is it, and it believes it runs on a.device
        real_load, real_device_for = embed.load_encoder, embed.device_for
        current: dict = {}
        embed.load_encoder = lambda backbone, mode, device, cache_dir: current["enc"]
        embed.device_for = lambda backend, device: a.device
        def quiet(_: int) -> None:  # no progress bar
            pass

        cases = ("encode nocache", "encode cache cold", "encode cache warm", "stream predict")
        try:
            for r in range(a.repeats):
                for kind in ("instant", "tokenising"):
                    current["enc"] = StandIn(kind == "tokenising", a.device)
                    cache = tmp / f"cache-{kind}-{r}"
                    for case in cases:
                        gc.collect()
                        t0 = time.perf_counter()
                        once = None
                        if case == "encode nocache":
                            encode(texts, EmbedSpec(cache=False, cache_dir=cache), progress=quiet)
                        elif case.startswith("encode cache"):
                            encode(texts, EmbedSpec(cache_dir=cache), progress=quiet)
                        else:
                            out = tmp / f"out-{kind}-{r}"
                            rc = cli.main(["predict", str(corpus), "--out", str(out), "--model", str(model_path), "--cache-dir", str(cache)])
                            if rc:
                                raise SystemExit(f"mtl predict failed ({rc})")
                            once = shard_rate(out)
                        s = time.perf_counter() - t0
                        run = res["runs"].setdefault(f"{kind}: {case}", {"s": [], "once_started_per_s": []})
                        run["s"].append(round(s, 4))
                        if once:
                            run["once_started_per_s"].append(round(once))
                        print(f"  repeat {r + 1}  {kind:<10} {case:<18} {n / s:>9,.0f} texts/s" + (f"  (once started {once:,.0f}/s)" if once else ""), flush=True)
        finally:
            embed.load_encoder, embed.device_for = real_load, real_device_for

    print(f"\nhost-side ceiling, {n:,} texts, encode() as on {a.device}, medians of {a.repeats} (load average {os.getloadavg()}):")
    for name, run in res["runs"].items():
        run["median_s"] = statistics.median(run["s"])
        run["texts_per_s"] = round(n / max(run["median_s"], 1e-9))
        if run["once_started_per_s"]:
            run["once_started_median_per_s"] = statistics.median(run["once_started_per_s"])
        extra = f"; once started {run['once_started_median_per_s']:,.0f}/s" if run["once_started_per_s"] else ""
        print(f"  {name:<32} {run['texts_per_s']:>9,} texts/s ({run['median_s']:.2f} s{extra})")
    res["machine"]["load_avg_now"] = os.getloadavg()
    path.write_text(json.dumps(res, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
