"""`encode(texts)`: embeddings through the cache, encoding only texts not seen before."""

from __future__ import annotations

import html
import re
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtl import paths
from mtl.backbone import DEFAULT_BACKBONE, layers_tag, num_layers, parse_layers, resolve_backbone
from mtl.cache import EmbeddingCache, text_key
from mtl.encoders import device_for, load_encoder, resolve_backend

PROGRESS_FROM = 1000  # show a progress bar only for encodes this long


@dataclass(frozen=True)
class EmbedSpec:
    """How texts become vectors: one small object passed wherever embeddings are made."""

    backend: str = "auto"  # see mtl.encoders: auto, torch, onnx, fp16, bf16, int8
    device: str = "auto"  # auto, cpu, cuda, mps (ONNX backends always run on the CPU)
    layers: str = "last"  # `last` or `A-B` (average of frozen layers A..B; see mtl.backbone)
    cache_dir: Path | str | None = None  # default: paths.CACHE_DIR
    backbone: str = DEFAULT_BACKBONE

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

_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
_SKIP = {"\ufe0f", "\u200d"}  # emoji variation selector and joiner: no meaning of their own


def backbone_text(text: str) -> str:
    """The text as the backbone should read it.

    The backbone's word-piece vocabulary has no emoji: "love it 😍" reads as "love it [UNK]",
    losing the sentiment. Pictographs are spelled out by their Unicode names, skin-tone and
    flag letters are dropped, and two scraping artefacts seen in tweets are undone: literal
    `\\u2019`-style escapes and HTML entities (`&amp;`). Plain ASCII text is returned unchanged.
    """
    if text.isascii() and "\\u" not in text and "&" not in text:
        return text
    text = html.unescape(_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text))
    if any("\ud800" <= ch <= "\udfff" for ch in text):  # escaped surrogate pairs -> one character
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    out, spelled = [], False
    for ch in text:
        if ch in _SKIP or unicodedata.category(ch) == "Sk" and ord(ch) >= 0x1F3FB:
            continue
        if unicodedata.category(ch) == "So" and ord(ch) >= 0x2190:
            name = unicodedata.name(ch, "")
            if not name.startswith("REGIONAL INDICATOR"):
                out.append(f" {name.lower()} ")
            spelled = True
            continue
        out.append(ch)
    text = "".join(out)
    return " ".join(text.split()) if spelled else text


def encode(texts: list[str], spec: EmbedSpec | None = None, verbose: bool = False) -> tuple[np.ndarray, EncodeStats]:
    """Embed `texts` (L2-normalised, float32), reading and filling the on-disk cache.

    Only texts the cache lacks are encoded, in chunks; each chunk is written to the cache by a
    background thread while the next one encodes, so an interrupted encode keeps its progress and
    cache writes stay off the critical path.
    """
    from concurrent.futures import ThreadPoolExecutor

    spec = spec or EmbedSpec()
    backbone = resolve_backbone(spec.backbone)
    span = None if str(spec.layers).strip().lower() == "last" else parse_layers(spec.layers, num_layers(backbone))
    dev = device_for(spec.backend, spec.device)
    mode = resolve_backend(spec.backend, dev)
    cache = EmbeddingCache(spec.cache_root(), backbone.identity, mode if span is None else f"{mode}-layers{layers_tag(span)}")
    texts = [backbone_text(t) for t in texts]
    keys = [text_key(t) for t in texts]
    stored = cache.get_many(list(dict.fromkeys(keys)))
    todo = list(dict.fromkeys(k for k in keys if k not in stored))
    if todo:
        enc_key = (backbone.identity, mode, dev)
        if enc_key not in _ENCODERS:
            _ENCODERS[enc_key] = load_encoder(backbone, mode, dev, spec.cache_root())
        encoder = _ENCODERS[enc_key]
        first = dict(zip(keys, texts))
        bar = None
        if len(todo) >= PROGRESS_FROM:
            from tqdm import tqdm  # plain: tqdm.auto warns in kernels without ipywidgets, and bars show on terminals only

            # a live bar in a terminal only: in a notebook or a log every redraw would become a line of output
            bar = tqdm(total=len(todo), desc="encoding", unit="sent", file=sys.stderr, disable=None)
        with ThreadPoolExecutor(max_workers=1) as writer:
            pending = None
            for start in range(0, len(todo), encoder.chunk_size):
                chunk = todo[start : start + encoder.chunk_size]
                emb = encoder.encode([first[k] for k in chunk], span=span)
                stored.update(zip(chunk, emb))
                if pending is not None:
                    pending.result()  # one write in flight at a time; re-raises a failed write
                pending = writer.submit(cache.put, chunk, emb)
                if bar is not None:
                    bar.update(len(chunk))
            pending.result()
        if bar is not None:
            bar.close()
    stats = EncodeStats(encoded=len(todo), cached=len(set(keys)) - len(todo), mode=mode, backbone_identity=backbone.identity, layers=layers_tag(span))
    if verbose:
        print(f"embeddings: {stats}", file=sys.stderr)
    out = np.stack([stored[k] for k in keys]) if keys else np.zeros((0, 0), dtype=np.float32)
    return out.astype(np.float32, copy=False), stats


def cell_similarity(x: np.ndarray, groups: list[str]):
    """Mean cosine similarity within each group vs between groups (embeddings are unit length)."""
    import pandas as pd

    groups = np.asarray(groups)
    sims = x @ x.T
    rows = []
    for g in sorted(set(groups)):
        inside = groups == g
        block = sims[np.ix_(inside, inside)]
        n = int(inside.sum())
        within = (block.sum() - np.trace(block)) / max(n * (n - 1), 1)
        between = sims[np.ix_(inside, ~inside)].mean() if (~inside).any() else np.nan
        rows.append({"cell": g, "n": n, "within": float(within), "between": float(between)})
    return pd.DataFrame(rows).set_index("cell")
