"""`encode(texts, spec)`: embeddings through the cache, encoding only texts not seen before.

The engine's front door. An `EmbedSpec` says how texts become vectors (backbone, backend, device,
layers, cache); `encode` reads the cache, runs the encoder on what is missing, in calls of
`TEXTS_PER_CALL[device]` texts, and hands each call's vectors to a background writer, so cache
writes stay off the critical path (a bounded queue: the encoder waits only when writes fall behind).
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtl import paths
from mtl.engine.backbone import DEFAULT_BACKBONE, Backbone, layers_tag, parse_layers, resolve_backbone
from mtl.engine.cache import EmbeddingCache, text_key
from mtl.engine.devices import device_for, resolve_backend
from mtl.engine.tokens import backbone_text
from mtl.progress import log

# Texts per encoder call: the unit of cache writes and progress. On a GPU one call has one device sync, and
# 512 tweets are about one batch there; on a CPU 512 keeps the bar moving and a killed run's loss small.
TEXTS_PER_CALL = {"cpu": 512, "cuda": 16384, "mps": 4096}
PROGRESS_FROM = 1000  # show a progress bar only for encodes this long
WRITE_QUEUE = 4  # encoder calls whose cache writes may be pending at once


@dataclass(frozen=True)
class EmbedSpec:
    """How texts become vectors: one small object passed wherever embeddings are made."""

    backend: str = "auto"  # see mtl.engine.devices: auto, torch, onnx, fp16, bf16, int8
    device: str = "auto"  # auto, cpu, cuda, mps (ONNX backends always run on the CPU)
    layers: str = "last"  # `last` or `A-B` (average of frozen layers A..B; see mtl.engine.backbone)
    cache_dir: Path | str | None = None  # default: paths.CACHE_DIR (the ONNX export lives there too)
    backbone: str = DEFAULT_BACKBONE
    cache: bool = True  # False: don't store vectors (corpus runs, where each text is seen once)

    def cache_root(self) -> Path:
        return Path(self.cache_dir or paths.CACHE_DIR)


@dataclass
class EncodeStats:
    encoded: int
    cached: int
    mode: str
    backbone_identity: str
    layers: str = "last"

    def __str__(self) -> str:
        return f"{self.encoded} encoded, {self.cached} from cache ({self.backbone_identity}, {self.mode}, layers {self.layers})"


_ENCODERS: dict[tuple, object] = {}  # one loaded model per process and mode


def load_encoder(backbone: Backbone, mode: str, device: str, cache_dir: Path):
    """The encoder for a concrete mode from `resolve_backend`, loaded once per process."""
    key = (backbone.identity, mode, device, str(cache_dir))
    if key not in _ENCODERS:
        if mode.startswith("onnx"):
            from mtl.engine.onnx_encoder import OnnxEncoder

            _ENCODERS[key] = OnnxEncoder(backbone, mode, cache_dir)
        elif mode.startswith("openvino"):  # openvino is imported only on this path
            from mtl.engine.openvino_encoder import OpenVinoEncoder

            _ENCODERS[key] = OpenVinoEncoder(backbone, mode, cache_dir)
        else:
            from mtl.engine.torch_encoder import TorchEncoder

            _ENCODERS[key] = TorchEncoder(backbone, mode, device)
    return _ENCODERS[key]


def encode(texts: list[str], spec: EmbedSpec | None = None, verbose: bool = False,
           progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, EncodeStats]:
    """Embed `texts` (L2-normalised, float32), reading and filling the on-disk cache.

    Only texts the cache lacks are encoded. `progress(n)` is told how many texts are done as they finish
    (the cached ones first); without it, long encodes show their own bar.
    """
    spec = spec or EmbedSpec()
    backbone = resolve_backbone(spec.backbone)
    span = parse_layers(spec.layers, backbone.n_layers)
    dev = device_for(spec.backend, spec.device)
    mode = resolve_backend(spec.backend, dev)
    cache = EmbeddingCache(spec.cache_root(), backbone.identity, mode if span is None else f"{mode}-layers{layers_tag(span)}")
    texts = [backbone_text(t) for t in texts]
    keys = [text_key(t) for t in texts]
    stored = cache.get_many(list(dict.fromkeys(keys))) if spec.cache else {}
    todo = list(dict.fromkeys(k for k in keys if k not in stored))
    rows_of = Counter(keys)  # progress counts rows (a repeated text is encoded once but is several rows)
    bar = None
    if progress is None and len(todo) >= PROGRESS_FROM:
        from mtl.progress import bar as progress_bar

        bar = progress_bar(len(keys), "encoding", "sent", initial=len(keys) - sum(rows_of[k] for k in todo))
        progress = bar.update
    elif progress is not None:
        progress(len(keys) - sum(rows_of[k] for k in todo))
    if todo:
        encoder = load_encoder(backbone, mode, dev, spec.cache_root())
        first = dict(zip(keys, texts))
        step = TEXTS_PER_CALL.get(dev, 512)
        with _Writer(cache if spec.cache else None) as writer:
            for start in range(0, len(todo), step):
                chunk = todo[start : start + step]
                emb = encoder.encode([first[k] for k in chunk], span=span)
                stored.update(zip(chunk, emb))
                writer.put(chunk, emb)
                if progress is not None:
                    progress(sum(rows_of[k] for k in chunk))
    if bar is not None:
        bar.close()
    stats = EncodeStats(encoded=len(todo), cached=len(set(keys)) - len(todo), mode=mode, backbone_identity=backbone.identity, layers=layers_tag(span))
    if verbose:
        log(f"embeddings: {stats}")
    out = np.stack([stored[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)
    return out.astype(np.float32, copy=False), stats


class _Writer:
    """Write-behind for the cache: a thread stores each call's vectors (one transaction each) while the next
    call encodes; at most WRITE_QUEUE calls wait. A failed write is raised at the end, nothing is lost silently."""

    def __init__(self, cache: EmbeddingCache | None):
        self.cache = cache
        self.jobs: queue.Queue = queue.Queue(maxsize=WRITE_QUEUE)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True) if cache is not None else None

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            if self.error is None:
                try:
                    self.cache.put(*job)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    self.error = exc

    def put(self, keys: list[bytes], emb: np.ndarray) -> None:
        if self.thread is not None:
            self.jobs.put((keys, emb))

    def __enter__(self) -> _Writer:
        if self.thread is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.thread is not None:
            self.jobs.put(None)
            self.thread.join()
            if self.error is not None and exc[0] is None:
                raise self.error
