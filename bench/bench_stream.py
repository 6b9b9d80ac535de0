"""Corpus-scale benchmark: streaming predict vs today's path, cache size vs latency, Ray workers.

    python bench/bench_stream.py corpus [--rows 50000 200000] [--baseline]   # sentences/s + peak RSS
    python bench/bench_stream.py cache [--entries 0 100000 1000000]          # one-sentence predict latency
    python bench/bench_stream.py ray [--rows 4000] [--workers 1 2]           # Ray Data engine, start-up included
    python bench/bench_stream.py kill [--rows 20000]                         # SIGKILL halfway, rerun, count rows

Every run is a fresh `python -m mtl ...` process on generated sentences (unique, so nothing comes from
the cache unless that is the point), with its own empty embedding cache (the ONNX export is shared).
Peak RSS is the child's `ru_maxrss` (os.wait4). `--baseline` also runs the code before this work
(`git merge-base HEAD main`, read-everything `mtl predict file.txt --format jsonl`). Results are
merged into bench/results/stream.json, with the CPU flags of the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PY = sys.executable
RESULTS = ROOT / "bench" / "results" / "stream.json"
WORDS = {
    "subject": ["The striker", "The prime minister", "Our council", "The fans", "The senator", "The goalkeeper", "The minister",
                "The cycling team", "Voters", "The champion", "The mayor", "The coach"],
    "verb": ["praised", "criticised", "announced", "rejected", "celebrated", "delayed", "questioned", "welcomed", "condemned"],
    "object": ["the budget", "a late winner", "the transfer", "the election result", "the stadium plan", "the tax reform",
               "the trade deal", "the referee", "the housing policy", "the squad"],
    "tail": ["on Monday", "after a debate", "before a packed crowd", "despite objections", "to general surprise", "amid anger"],
}


BASELINE_REV = "921853f^1"  # main just before "Merge issue12": whole-input predict, one dict cache


def sentences(n: int, seed: int = 0) -> list[str]:
    """n unique short generated sentences (~10 words): not training data, so every one is a cache miss."""
    rng = random.Random(seed)
    return [f"{' '.join(rng.choice(WORDS[k]) for k in WORDS)} (#{seed}-{i})." for i in range(n)]


def machine() -> str:
    flags = sorted(set(open("/proc/cpuinfo").read().split()) & {"avx2", "avx512f", "avx512_bf16", "amx_tile"})
    return f"{os.cpu_count()} CPUs, flags: {' '.join(flags)}"


def fresh_cache(base: Path) -> Path:
    """An empty embedding cache that shares the project's ONNX export (exported once, not per run)."""
    from mtl import paths

    base.mkdir(parents=True, exist_ok=True)
    onnx = paths.CACHE_DIR / "onnx"
    if not onnx.is_dir():
        subprocess.run([PY, "-c", "from mtl.engine.embed import EmbedSpec, encode; encode(['warm up'], EmbedSpec(backend='onnx'))"], cwd=ROOT, check=True)
    (base / "onnx").symlink_to(onnx)
    return base


def run(cmd: list[str], env: dict | None = None) -> dict:
    """Run a child to the end; wall time and its stderr."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return {"s": round(time.perf_counter() - t0, 2), "stderr": proc.stderr}


def run_rss(cmd: list[str], env: dict | None = None, stdin: bytes | None = None) -> dict:
    """Like `run`, with the child's peak RSS. Measured by GNU time, a small process that forks the child:
    a child forked straight from this (bigger) process would report this process's peak as its own."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB=%M", *cmd], cwd=ROOT, env={**os.environ, **(env or {})}, input=stdin,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    err = proc.stderr.decode(errors="replace")
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-2000:]}")
    kb = int(err.rsplit("MAXRSS_KB=", 1)[1].split()[0])
    return {"s": round(wall, 2), "peak_rss_mb": round(kb / 1024), "stderr": err}


def model() -> Path:
    from mtl import paths

    if not paths.CHECKPOINT.is_file():
        raise SystemExit(f"{paths.CHECKPOINT} missing: run `mtl train` first")
    return paths.CHECKPOINT


def write_corpus(tmp: Path, n: int) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = sentences(n)
    pq.write_table(pa.table({"text": texts}), tmp / f"corpus{n}.parquet", row_group_size=10_000)
    (tmp / f"corpus{n}.txt").write_text("\n".join(texts) + "\n")
    return tmp / f"corpus{n}.parquet", tmp / f"corpus{n}.txt"


def baseline_tree(tmp: Path) -> Path:
    """The package as it was before streaming (main before the issue-12 merge), for the 'today' runs."""
    rev = subprocess.run(["git", "rev-parse", BASELINE_REV], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    out = tmp / "baseline"
    out.mkdir()
    archive = subprocess.run(["git", "archive", rev, "mtl"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def bench_corpus(rows: list[int], which: list[str], chunk: int) -> dict:
    import pyarrow.parquet as pq

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="mtl-bench-") as t:
        tmp = Path(t)
        base = baseline_tree(tmp) if "today" in which else None
        for n in rows:
            pq_path, txt_path = write_corpus(tmp, n)
            if "stream" in which:
                cache = fresh_cache(tmp / f"cache-stream-{n}")
                r = run_rss([PY, "-m", "mtl", "predict", str(pq_path), "--out", str(tmp / f"preds{n}"), "--chunk-size", str(chunk),
                             "--model", str(model()), "--cache-dir", str(cache)], env={"PYTHONPATH": str(ROOT)})
                complete = pq.read_table(tmp / f"preds{n}", columns=["text"]).column("text").to_pylist() == sentences(n)
                out[f"stream_{n}"] = {"rows": n, "s": r["s"], "sent_per_s": round(n / r["s"], 1), "peak_rss_mb": r["peak_rss_mb"],
                                      "rows_complete_in_order": complete}
                print(f"streaming  {n:>7} rows: {n / r['s']:6.1f} sent/s, peak RSS {r['peak_rss_mb']} MB, output complete: {complete}", flush=True)
            if base is not None:
                cache = fresh_cache(tmp / f"cache-base-{n}")
                r = run_rss([PY, "-m", "mtl", "predict", str(txt_path), "--format", "jsonl", "--model", str(model()), "--cache-dir", str(cache)],
                            env={"PYTHONPATH": str(base), "MTL_ROOT": str(ROOT)})
                out[f"today_{n}"] = {"rows": n, "s": r["s"], "sent_per_s": round(n / r["s"], 1), "peak_rss_mb": r["peak_rss_mb"]}
                print(f"today      {n:>7} rows: {n / r['s']:6.1f} sent/s, peak RSS {r['peak_rss_mb']} MB", flush=True)
        if len(rows) > 1 and f"stream_{rows[0]}" in out:
            a, b = out[f"stream_{rows[0]}"]["peak_rss_mb"], out[f"stream_{rows[-1]}"]["peak_rss_mb"]
            out["stream_rss_ratio"] = round(b / a, 3)
            print(f"streaming peak RSS {rows[-1]} / {rows[0]} rows: {b / a:.3f}")
    return out


def fill_cache(cache_dir: Path, n: int, dim: int = 384) -> None:
    """n synthetic unit vectors under random keys, through the cache API (no encoding)."""
    from mtl.engine.backbone import resolve_backbone
    from mtl.engine.cache import EmbeddingCache

    cache = EmbeddingCache(cache_dir, resolve_backbone().identity, "onnx-fp32")
    rng = np.random.default_rng(0)
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        v = rng.standard_normal((m, dim), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        raw = rng.bytes(32 * m)
        cache.put([raw[i : i + 32] for i in range(0, 32 * m, 32)], v)


def bench_cache(entries: list[int], repeats: int) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="mtl-bench-") as t:
        tmp = Path(t)
        caches: dict[int, Path] = {}
        for n in entries:
            caches[n] = fresh_cache(tmp / f"cache{n}")
            t0 = time.perf_counter()
            fill_cache(caches[n], n)
            size = sum(p.stat().st_size for p in (caches[n] / "embeddings").rglob("cache.sqlite*")) if n else 0
            out[str(n)] = {"entries": n, "fill_s": round(time.perf_counter() - t0, 1), "db_mb": round(size / 1e6), "times_s": [], "rss_mb": []}
        os.sync()  # the fill wrote up to 2 GB: let write-back finish so it does not land on the first lookups
        # Round-robin over the cache sizes, so load from other users of this machine hits every size alike.
        for i in range(repeats):
            for n in entries:
                cmd = [PY, "-m", "mtl", "predict", "-", "--backend", "onnx", "--model", str(model()), "--cache-dir", str(caches[n])]
                r = run_rss(cmd, env={"PYTHONPATH": str(ROOT)}, stdin=f"A brand new sentence about the cup final, number {n}-{i}.\n".encode())
                out[str(n)]["times_s"].append(r["s"])
                out[str(n)]["rss_mb"].append(r["peak_rss_mb"])
        for n in entries:
            o = out[str(n)]
            o["median_s"], o["peak_rss_mb"] = round(statistics.median(o["times_s"]), 3), round(statistics.median(o["rss_mb"]))
            print(f"cache {n:>8} entries ({o['db_mb']:6.0f} MB, filled in {o['fill_s']:5.1f} s): one-sentence predict median "
                  f"{o['median_s']:.3f} s of {repeats} (min {min(o['times_s']):.3f}), peak RSS {o['peak_rss_mb']} MB", flush=True)
    if "0" in out:
        for n in entries:
            out[str(n)]["vs_empty_s"] = round(out[str(n)]["median_s"] - out["0"]["median_s"], 3)
            out[str(n)]["vs_empty_rss_mb"] = round(out[str(n)]["peak_rss_mb"] - out["0"]["peak_rss_mb"])
        print("vs empty cache: " + ", ".join(f"{n}: {out[str(n)]['vs_empty_s']:+.3f} s / {out[str(n)]['vs_empty_rss_mb']:+d} MB" for n in entries))
    return out


def bench_ray(rows: int, workers: list[int], chunk: int) -> dict:
    import pyarrow.parquet as pq

    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="mtl-bench-") as t:
        tmp = Path(t)
        pq_path, _ = write_corpus(tmp, rows)
        for label, extra in [("local", [])] + [(f"ray_{w}", ["--engine", "ray", "--workers", str(w)]) for w in workers]:
            cache = fresh_cache(tmp / f"cache-{label}")
            r = run([PY, "-m", "mtl", "predict", str(pq_path), "--out", str(tmp / label), "--chunk-size", str(chunk), "--model", str(model()),
                     "--cache-dir", str(cache), *extra], env={"PYTHONPATH": str(ROOT)})
            same = pq.read_table(tmp / label, columns=["text", "topic", "sentiment"]).to_pylist() == pq.read_table(tmp / "local", columns=["text", "topic", "sentiment"]).to_pylist()
            out[label] = {"rows": rows, "s": r["s"], "sent_per_s": round(rows / r["s"], 1), "same_rows_as_local": same}
            print(f"{label:>8}: {rows} rows in {r['s']:.1f} s ({rows / r['s']:.1f} sent/s end to end), same rows as local: {same}", flush=True)
        # Start-up: Ray on an input of one sentence (init, actor start, encoder load), against the local engine on the same.
        one = tmp / "one.txt"
        one.write_text("One sentence.\n")
        for label, extra in (("local_1_row", []), ("ray_1_row", ["--engine", "ray", "--workers", "1"])):
            r = run([PY, "-m", "mtl", "predict", str(one), "--out", str(tmp / label), "--model", str(model()), *extra], env={"PYTHONPATH": str(ROOT)})
            out[label] = {"s": r["s"]}
        out["ray_startup_s"] = round(out["ray_1_row"]["s"] - out["local_1_row"]["s"], 1)
        print(f"start-up: one sentence takes {out['ray_1_row']['s']:.1f} s on Ray vs {out['local_1_row']['s']:.1f} s locally "
              f"(overhead {out['ray_startup_s']:.1f} s)")
    return out


def bench_kill(rows: int, chunk: int) -> dict:
    """SIGKILL a streaming predict halfway, rerun it, and count the rows."""
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="mtl-bench-") as t:
        tmp = Path(t)
        pq_path, _ = write_corpus(tmp, rows)
        cache, out = fresh_cache(tmp / "cache"), tmp / "preds"
        cmd = [PY, "-m", "mtl", "predict", str(pq_path), "--out", str(out), "--chunk-size", str(chunk), "--model", str(model()), "--cache-dir", str(cache)]
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.DEVNULL)
        half = rows // chunk // 2
        while len(list(out.glob("part-*"))) < half and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        before = len(list(out.glob("part-*")))
        r = run(cmd, env={"PYTHONPATH": str(ROOT)})
        got = pq.read_table(out, columns=["text"]).column("text").to_pylist()
        res = {"rows": rows, "shards_before_kill": before, "rerun_s": r["s"], "rows_out": len(got), "unique": len(set(got)),
               "complete_in_order": got == sentences(rows), "rerun_says": r["stderr"].strip().splitlines()[-1]}
        print(f"killed with {before} of {-(-rows // chunk)} shards written; rerun {r['s']:.1f} s: {len(got)} rows, {len(set(got))} unique, "
              f"complete and in order: {res['complete_in_order']} ({res['rerun_says']})")
        return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("corpus", "cache", "ray", "kill"))
    ap.add_argument("--rows", type=int, nargs="+", default=None)
    ap.add_argument("--entries", type=int, nargs="+", default=[0, 100_000, 1_000_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--chunk-size", type=int, default=10_000)
    ap.add_argument("--paths", nargs="+", choices=("stream", "today"), default=["stream"], help="corpus: streaming and/or the pre-streaming code")
    a = ap.parse_args()
    print(f"machine: {machine()}", flush=True)
    if a.what == "corpus":
        res = bench_corpus(a.rows or [50_000, 200_000], a.paths, a.chunk_size)
    elif a.what == "cache":
        res = bench_cache(a.entries, a.repeats)
    elif a.what == "ray":
        res = bench_ray((a.rows or [4000])[0], a.workers, min(a.chunk_size, 1000))
    else:
        res = bench_kill((a.rows or [20_000])[0], min(a.chunk_size, 2000))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    all_res = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    all_res.setdefault(a.what, {}).update({"machine": machine(), **res})  # runs of one section with other sizes add up
    from mtl.atomic import write_text

    write_text(RESULTS, json.dumps(all_res, indent=1))


if __name__ == "__main__":
    main()
