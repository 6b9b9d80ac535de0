"""Encoding benchmark: every backend against plain SentenceTransformer.encode (torch fp32), same run, same sentences.

    python bench/bench_encode.py [--n 2000] [--device cpu|cuda] [--json bench/results/encode.json]

Prints, per mode: sentences/s, x the reference, mean/min cosine vs fp32, label agreement
with fp32 (default heads), peak RSS; then int8's held-out accuracy vs fp32, cache hit vs
miss, and the cold start of `mtl predict` vs `import sentence_transformers`.
Each mode runs in its own process so peak memory and import costs don't leak between modes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = {
    "subject": ["the striker", "the prime minister", "our local council", "the home fans", "the senator", "the young goalkeeper",
                "the finance minister", "the cycling team", "voters in the north", "the tennis champion", "the mayor", "the coach"],
    "verb": ["praised", "criticised", "announced", "rejected", "celebrated", "delayed", "questioned", "welcomed", "condemned", "defended"],
    "object": ["the new budget", "a late winner", "the transfer deal", "the election result", "the stadium plan", "the tax reform",
               "the trade agreement", "the referee's decision", "the housing policy", "the final squad"],
    "tail": ["on Monday", "after a long debate", "in front of a packed crowd", "despite strong objections", "to the surprise of many",
             "amid growing anger", "during a tense press conference", "before the summer break"],
    "extra": ["and supporters said it was a disaster", "while analysts expect more changes soon", "which left everyone frustrated",
              "and the mood in the city was wonderful", "as critics warned of the consequences", "so the whole region is talking about it"],
}


def bench_sentences(n: int, seed: int = 0) -> list[str]:
    """Generated sentences of 8-40 words (not the training data, so no cache hits)."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        parts = [rng.choice(WORDS[k]) for k in ("subject", "verb", "object", "tail")]
        parts += [rng.choice(WORDS["extra"]) for _ in range(rng.randint(0, 4))]
        s = " ".join(parts)
        if 8 <= len(s.split()) <= 40:
            out.append(f"{s[0].upper()}{s[1:]} (#{len(out)}).")
    return out


def run_mode(mode: str, n: int, device: str, out: str) -> None:
    """Child process: encode with one mode, save vectors, print timing and peak RSS as JSON."""
    texts = bench_sentences(n)
    t0 = time.perf_counter()
    if mode == "reference":
        from sentence_transformers import SentenceTransformer

        from mtl.backbone import resolve_backbone

        model = SentenceTransformer(resolve_backbone().path, device=device)
        load_s = time.perf_counter() - t0
        model.encode(texts[:32])
        t = time.perf_counter()
        x = model.encode(texts, batch_size=32, normalize_embeddings=True)
    else:
        from mtl import paths
        from mtl.backbone import load_encoder, resolve_backbone

        enc = load_encoder(resolve_backbone(), mode, device, paths.CACHE_DIR)
        load_s = time.perf_counter() - t0
        enc.encode(texts[:32])
        t = time.perf_counter()
        x = enc.encode(texts)
    secs = time.perf_counter() - t
    np.save(out, np.asarray(x, dtype=np.float32))
    print(json.dumps({"mode": mode, "seconds": secs, "load_seconds": load_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def child(mode: str, n: int, device: str, tmp: Path) -> tuple[dict, np.ndarray]:
    out = tmp / f"{mode}.npy"
    r = subprocess.run([sys.executable, __file__, "--child", mode, "--n", str(n), "--device", device, "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if r.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1]), np.load(out)


def wall(cmd: str, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, shell=True, capture_output=True, cwd=ROOT, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=str(ROOT / "bench/results/encode.json"))
    ap.add_argument("--child")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.child:
        return run_mode(a.child, a.n, a.device, a.out)

    from mtl.backbone import cpu_has_bf16
    from mtl.embed import encode
    from mtl.heads import predict_proba
    from mtl.pipeline import train_from_csv
    from mtl.train import TrainConfig

    modes = ["torch-fp32", "onnx-fp32", "onnx-int8"]
    if a.device == "cuda":
        modes = ["torch-fp32", "torch-fp16"]
    elif cpu_has_bf16():
        modes.append("torch-bf16")
    results: dict = {"n": a.n, "device": a.device, "cpu_bf16": cpu_has_bf16(), "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt_dir = tmp / "ckpt"
        trained = train_from_csv(None, config=TrainConfig(device="cpu"), backend="onnx", out=ckpt_dir / "m.safetensors", metrics_out=ckpt_dir / "m.json", verbose=False)
        tasks = trained["meta"]["tasks"]
        ref_info, ref = child("reference", a.n, a.device, tmp)
        ref_rate = a.n / ref_info["seconds"]
        ref_labels = {t: p.argmax(1) for t, p in predict_proba(trained["state"], tasks, ref).items()}
        print(f"{'mode':<22}{'sent/s':>9}{'x ref':>8}{'cos mean':>10}{'cos min':>9}{'labels=':>9}{'peak MB':>9}")
        rows = [("reference (ST encode)", ref_info, ref)] + [(m, *child(m, a.n, a.device, tmp)) for m in modes]
        for name, info, x in rows:
            cos = (x * ref).sum(1)
            labels = {t: p.argmax(1) for t, p in predict_proba(trained["state"], tasks, x).items()}
            agree = float(np.mean([np.mean(labels[t] == ref_labels[t]) for t in tasks]))
            rate = a.n / info["seconds"]
            results["modes"][name] = {"sent_per_s": rate, "x_reference": rate / ref_rate, "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                                      "label_agreement": agree, "peak_rss_mb": info["peak_rss_mb"], "load_seconds": info["load_seconds"]}
            print(f"{name:<22}{rate:>9.0f}{rate / ref_rate:>8.2f}{cos.mean():>10.5f}{cos.min():>9.5f}{agree:>9.4f}{info['peak_rss_mb']:>9.0f}")

        if a.device != "cuda":  # int8 held-out accuracy vs fp32, on the shipped test split
            acc = {}
            for backend in ("onnx", "int8"):
                r = train_from_csv(None, config=TrainConfig(device="cpu"), backend=backend, out=ckpt_dir / f"{backend}.safetensors",
                                   metrics_out=ckpt_dir / f"{backend}.json", verbose=False)
                acc[backend] = {t: m["accuracy"] for t, m in r["metrics"]["test"].items()}
            results["int8_held_out"] = acc
            print(f"held-out accuracy fp32 {acc['onnx']}  int8 {acc['int8']}")

            texts = [f"cache probe {i}: " + s for i, s in enumerate(bench_sentences(a.n, seed=1))]
            cache = tmp / "cache"
            encode(texts[:2], backend="onnx", cache_dir=cache)
            t = time.perf_counter()
            encode(texts, backend="onnx", cache_dir=cache)
            miss = time.perf_counter() - t
            t = time.perf_counter()
            encode(texts, backend="onnx", cache_dir=cache)
            hit = time.perf_counter() - t
            results["cache"] = {"miss_s": miss, "hit_s": hit, "speedup": miss / hit}
            print(f"cache: first encode {miss:.2f} s, second {hit:.3f} s ({miss / hit:.0f}x)")

            mtl = f"{sys.executable} -m mtl"
            # a new sentence every call, so each call really encodes (no cache hit)
            run_cli = f'echo "The striker scored a late winner $(date +%N)" | {mtl} predict - --model {ckpt_dir / "m.safetensors"} --cache-dir {tmp / "cold"}'
            subprocess.run(run_cli, shell=True, capture_output=True, cwd=ROOT)  # warms the OS page cache only
            cold = wall(run_cli)
            st = wall(f"{sys.executable} -c 'import sentence_transformers'")
            results["cold_start"] = {"mtl_predict_s": cold, "import_sentence_transformers_s": st}
            print(f"cold start: mtl predict {cold:.2f} s (median of 5) vs import sentence_transformers {st:.2f} s")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
