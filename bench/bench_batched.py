"""Batched training (`mtl.research.batched.train_many`) against training the same models one at a time (`mtl.train.train`).

    python bench/bench_batched.py                                   # 200 models, 500 and 2000 steps, trunk and linear heads
    python bench/bench_batched.py --models 50 --steps 200 --ref-models 5   # quick

Data: random unit vectors (dim 384), task `few` (3 classes) and task `other` (2 classes). Every model has 64 rows of
`few` and 1,000 of `other`, both tasks active (weights cycle 0.03/0.1/0.3/1), batch size 32: each step is 32 rows
per task, so a trunk (384 -> 256) model runs 64 rows through its trunk per step.

The reference is what one-at-a-time costs: `mtl.train.train` (its own sampler; one thread, as it sets) on 64 rows
(32 labelled for `few` only, 32 for `other` only) with batch size 64 and epochs = steps, so each of its steps is
the same model size, the same 32 rows per task and one Adam update. It runs `--ref-models` models and is
scaled to `--models` (one-at-a-time cost is linear in the number of models). Batched runs: one process with 1
and with 2 torch threads, and two processes of 1 thread with half the models each (wall time including the
processes' start, and the slower worker's training time alone). Results: JSON in bench/results/ (git-ignored),
naming the machine and the load average at start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TASKS = {"few": ["a", "b", "c"], "other": ["x", "y"]}
LAMBDAS = (0.03, 0.1, 0.3, 1.0)


def machine() -> dict:
    import torch

    from mtl.engine.devices import cpu_name

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads_default": torch.get_num_threads(),
            "load_avg_at_start": os.getloadavg(), "host": os.uname().nodename}


def make_data(n: int = 1200, dim: int = 384, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, {"few": rng.integers(0, 3, n), "other": rng.integers(0, 2, n)}


def members(n_models: int, first: int = 0):
    from mtl.research.batched import Member

    out = []
    for i in range(first, first + n_models):
        rng = np.random.default_rng(1000 + i)
        out.append(Member({"few": rng.choice(200, 64, replace=False), "other": np.arange(200, 1200)}, {"other": LAMBDAS[i % 4]}, i))
    return out


def config(mode: str, batch: int = 32, trunk: int = 256):
    from mtl.config import TrainConfig

    return TrainConfig(batch_size=batch, share="trunk" if mode == "trunk" else "none", trunk_hidden=trunk, device="cpu")


def batched(mode: str, n_models: int, steps: int, threads: int, first: int = 0, trunk: int = 256) -> float:
    """Seconds to train `n_models` models (starting at member `first`) in one train_many call."""
    from mtl.research.batched import train_many

    x, y = make_data()
    ms = members(n_models, first)
    t = time.perf_counter()
    train_many(x, y, TASKS, ms, config(mode, trunk=trunk), steps, threads=threads)
    return time.perf_counter() - t


def _worker(args) -> float:
    return batched(*args)


def two_processes(mode: str, n_models: int, steps: int, trunk: int) -> tuple[float, float]:
    """(wall seconds, the slower worker's training seconds) with half the models in each of two 1-thread processes."""
    import multiprocessing as mp

    half = n_models // 2
    t = time.perf_counter()
    with mp.get_context("spawn").Pool(2) as pool:
        inner = pool.map(_worker, [(mode, half, steps, 1, 0, trunk), (mode, n_models - half, steps, 1, half, trunk)])
    return time.perf_counter() - t, max(inner)


def reference(mode: str, n_models: int, steps: int, trunk: int) -> float:
    """Seconds for `n_models` one-at-a-time `mtl.train.train` runs of `steps` Adam steps each."""
    from dataclasses import replace

    from mtl.train import train

    x, y = make_data()
    total = 0.0
    for i in range(n_models):
        rows = np.concatenate([np.arange(32), 200 + np.arange(32) + i])
        xm = x[rows]
        ym = {"few": np.where(np.arange(64) < 32, y["few"][rows], -1), "other": np.where(np.arange(64) >= 32, y["other"][rows], -1)}
        cfg = replace(config(mode, batch=64, trunk=trunk), epochs=steps, seed=i, task_weights={"other": LAMBDAS[i % 4]})
        t = time.perf_counter()
        train(xm, ym, TASKS, cfg)
        total += time.perf_counter() - t
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--steps", type=int, nargs="+", default=[500, 2000])
    ap.add_argument("--modes", nargs="+", default=["trunk", "linear"], choices=["trunk", "linear"])
    ap.add_argument("--ref-models", type=int, default=10, help="models the one-at-a-time reference trains (scaled to --models)")
    ap.add_argument("--trunk", type=int, default=256)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch threads of the one-process batched runs")
    ap.add_argument("--no-procs", action="store_true", help="skip the two-process run")
    ap.add_argument("--json", default=None, help="default bench/results/batched.json")
    a = ap.parse_args()
    path = Path(a.json or ROOT / "bench/results/batched.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    res = {"machine": machine(), "models": a.models, "ref_models": a.ref_models, "trunk": a.trunk, "rows": []}
    print(f"machine: {res['machine']}", flush=True)
    batched("linear", 2, 2, 1)  # warm up torch (first-call costs) outside the timings
    for steps in a.steps:
        for mode in a.modes:
            ref = reference(mode, a.ref_models, steps, a.trunk) * a.models / a.ref_models
            row = {"mode": mode, "steps": steps, "reference_s": ref}
            row["load_avg_before"] = os.getloadavg()[0]
            for threads in a.threads:
                row[f"batched_{threads}thread_s"] = batched(mode, a.models, steps, threads, trunk=a.trunk)
            if not a.no_procs:
                row["two_procs_wall_s"], row["two_procs_train_s"] = two_processes(mode, a.models, steps, a.trunk)
            row["load_avg_after"] = os.getloadavg()[0]
            best = min(v for k, v in row.items() if k.startswith(("batched", "two_procs_wall")))
            row["speedup_best"] = ref / best
            res["rows"].append(row)
            times = "  ".join(f"{k[:-2]} {v:.1f} s" for k, v in row.items() if k.endswith("_s"))
            print(f"{mode:6} {steps:5} steps, {a.models} models: {times}  | per model-step batched best "
                  f"{best / a.models / steps * 1e6:.0f} us, reference {ref / a.models / steps * 1e6:.0f} us  -> {row['speedup_best']:.1f}x"
                  f"  (load {row['load_avg_before']:.1f} -> {row['load_avg_after']:.1f})",
                  flush=True)
            res["machine"]["load_avg_now"] = os.getloadavg()
            path.write_text(json.dumps(res, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
