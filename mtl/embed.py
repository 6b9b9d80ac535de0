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
from mtl.backbone import (
    DEFAULT_BACKBONE,
    layers_tag,
    load_encoder,
    num_layers,
    parse_layers,
    resolve_backbone,
    resolve_backend,
    resolve_device,
)
from mtl.cache import EmbeddingCache, text_key

PROGRESS_FROM = 1000  # show a progress bar only for encodes this long
CHUNK = 512  # texts per cache shard while encoding, so an interrupted encode keeps its progress


@dataclass
class EncodeStats:
    encoded: int
    cached: int
    mode: str
    backbone: str
    layers: str = "last"

    def __str__(self) -> str:
        return f"{self.encoded} encoded, {self.cached} from cache ({self.backbone}, {self.mode}, layers {self.layers})"


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


def encode(
    texts: list[str],
    backbone: str = DEFAULT_BACKBONE,
    backend: str = "auto",
    device: str = "auto",
    cache_dir: Path | str | None = None,
    batch_size: int = 32,
    verbose: bool = False,
    layers: str = "last",
) -> tuple[np.ndarray, EncodeStats]:
    """Embed `texts` (L2-normalised, float32), reading and filling the on-disk cache.

    `layers`: `last` (the model's own embedding) or `A-B` (average of layers A..B; see mtl.backbone).
    """
    spec = resolve_backbone(backbone)
    span = None if str(layers).strip().lower() == "last" else parse_layers(layers, num_layers(spec))
    dev = "cpu" if backend in ("onnx", "int8") else resolve_device(device)
    mode = resolve_backend(backend, dev)
    cache = EmbeddingCache(Path(cache_dir or paths.CACHE_DIR), spec.identity, mode if span is None else f"{mode}-layers{layers_tag(span)}")
    texts = [backbone_text(t) for t in texts]
    keys = [text_key(t) for t in texts]
    stored = cache.get_many(keys)  # only the keys asked for: O(batch), not O(cache)
    todo = list(dict.fromkeys(k for k in keys if k not in stored))
    if todo:
        enc_key = (spec.identity, mode, dev)
        if enc_key not in _ENCODERS:
            _ENCODERS[enc_key] = load_encoder(spec, mode, dev, Path(cache_dir or paths.CACHE_DIR))
        encoder = _ENCODERS[enc_key]
        first = {k: t for k, t in zip(keys, texts)}
        bar = None
        if len(todo) >= PROGRESS_FROM:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="encoding", unit="sent", file=sys.stderr)
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start : start + CHUNK]
            emb = encoder.encode([first[k] for k in chunk], batch_size=batch_size, span=span)
            cache.put(chunk, emb)
            stored.update(zip(chunk, emb))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
    stats = EncodeStats(encoded=len(todo), cached=len(set(keys)) - len(todo), mode=mode, backbone=spec.identity, layers=layers_tag(span))
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
