"""`--engine ray`: a corpus run's chunks labelled by actors on a Ray cluster (more machines, or GPUs, than one).

The driver (this process, e.g. under `ray job submit`) reads the input and writes the shards exactly as the
local engine does (`mtl.corpus.stream`): chunk i becomes `part-<i>` atomically, finished shards are skipped
on a rerun, so an interrupted Ray run keeps what it finished. Only the labelling moves: each actor loads the
encoder and the heads once, then labels the chunks it is sent through `mtl.predict.label`, the function the
local engine calls. At most two chunks per actor are in flight, so memory stays bounded whatever the corpus.
Workers need no shared file system: texts travel to them and predictions back; the checkpoint travels as
bytes (safetensors, no pickle).

With `--address` (or `$RAY_ADDRESS`) it joins that cluster; otherwise it starts a local one on 127.0.0.1.
Ray is an optional extra (`pip install -e ".[scale]"`) and imported only here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mtl.corpus.stream import Engine, Job
from mtl.engine.devices import CPU_BACKENDS
from mtl.errors import MTLError

IN_FLIGHT_PER_ACTOR = 2  # one chunk labelling, one waiting: the actor never idles and memory stays bounded


class Labeller:
    """One Ray actor: the encoder and the heads are loaded once, then every chunk goes through them."""

    def __init__(self, ckpt_bytes: bytes | None, settings: dict):
        from mtl.checkpoint import load_checkpoint
        from mtl.engine.embed import EmbedSpec

        self.spec = EmbedSpec(**settings)
        self.ckpt = None
        if ckpt_bytes is not None:
            # Workers may not see the driver's files: the checkpoint travels as bytes and is read as safetensors.
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.safetensors"
                path.write_bytes(ckpt_bytes)
                self.ckpt = load_checkpoint(path)

    def label(self, i: int, texts: list[str]):
        from mtl.engine.embed import encode
        from mtl.predict import embed_for, label

        if self.ckpt is not None:
            return i, label(texts, lambda good: embed_for(self.ckpt, "<checkpoint>", good, self.spec)[0], self.ckpt)
        return i, label(texts, lambda good: encode(good, self.spec)[0])


def _root_cause(exc: BaseException) -> str:
    """The innermost `SomeError: message` line of a Ray traceback (Ray wraps it in several layers)."""
    import re

    causes = re.findall(r"^(?:\S+\.)?(\w*(?:Error|Exception)): (.+)$", str(exc), re.M)
    name, msg = causes[-1] if causes else (type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "")
    return (msg if name == "MTLError" else f"{name}: {msg}")[:300]


def connect(address: str | None, workers: int) -> str:
    """Join the cluster at `address` (or $RAY_ADDRESS), or start a local one on 127.0.0.1; returns where it runs."""
    import ray

    if ray.is_initialized():
        return "the running Ray instance"
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
            return f"the Ray cluster at {address}"
        # Local: the actors take one logical CPU each; one more lets the driver's own tasks run beside them.
        ray.init(num_cpus=max(os.cpu_count() or 1, workers + 1), include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")
        return "a local Ray instance"
    except Exception as exc:  # noqa: BLE001 (Ray raises ConnectionError, RuntimeError or a bare Exception here)
        ray.shutdown()
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MTLError(f"--engine ray: cannot reach {where} ({first[:200]})") from None


def ray_engine(job: Job, device: str = "auto", cache_dir: str | None = None, workers: int = 1, address: str | None = None) -> Engine:
    """An `Engine` (see `mtl.corpus.stream`) whose chunks are labelled by `workers` Ray actors."""
    try:
        import ray
    except ImportError:
        raise MTLError("--engine ray: Ray is not installed; pip install -e '.[scale]'") from None
    connect(address, workers)
    gpus = ray.cluster_resources().get("GPU", 0)
    backend = job.backend or "auto"
    if device == "cuda" and not gpus:
        raise MTLError("--device cuda: the Ray cluster has no GPU; use --device cpu or auto")
    use_gpu = gpus > 0 and device in ("auto", "cuda") and backend not in CPU_BACKENDS
    settings = {"backend": backend, "device": "cuda" if use_gpu else "cpu", "cache_dir": cache_dir,
                "layers": job.layers or "last", "backbone": job.backbone or _default_backbone(), "cache": False}
    ckpt_bytes = Path(job.model).read_bytes() if job.model else None
    actor = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(Labeller)
    pool = [actor.remote(ckpt_bytes, settings) for _ in range(workers)]

    def run(chunks, progress):
        pending: dict = {}  # object ref -> (actor index, rows)
        load = [0] * workers
        try:
            for i, texts, _ in chunks:
                while min(load) >= IN_FLIGHT_PER_ACTOR:
                    yield _take(ray, pending, load, progress)
                a = load.index(min(load))
                pending[pool[a].label.remote(i, texts)] = (a, len(texts))
                load[a] += 1
            while pending:
                yield _take(ray, pending, load, progress)
        except ray.exceptions.RayError as exc:
            raise MTLError(f"Ray run failed: {_root_cause(exc)}") from None
        finally:
            for ref in pending:  # an interrupted run: drop what the actors still hold
                ray.cancel(ref)

    return run


def _take(ray, pending: dict, load: list[int], progress):
    """Wait for the next finished chunk; return (index, Predictions)."""
    (ref,), _ = ray.wait(list(pending), num_returns=1)
    a, n = pending.pop(ref)
    load[a] -= 1
    result = ray.get(ref)
    progress(n)
    return result


def _default_backbone() -> str:
    from mtl.engine.backbone import DEFAULT_BACKBONE

    return DEFAULT_BACKBONE
