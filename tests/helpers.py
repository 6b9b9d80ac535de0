"""Helpers only the tests use (kept out of the package: nothing in mtl/ calls them)."""

from __future__ import annotations

import numpy as np

from mtl.engine.devices import MODES

FP32_EXACT = ("torch-fp32", "onnx-fp32")  # cosine >= 0.9999 to SentenceTransformer.encode in fp32


def backend_of(mode: str) -> str:
    """The `--backend` name of a mode (`onnx-fp32` -> `onnx`), to re-encode as a checkpoint was trained."""
    return {m: b for b, m in MODES.items()}[mode]


def torch_embedding(model, texts: list[str], span, cls: bool = False):
    """torch: unit-length embeddings of `texts` from a SentenceTransformer's layers `span` (None: last), through
    the whole backbone: what an adapted model's `Prefix` path must reproduce."""
    from mtl.engine.backbone import pooled_embedding, tokenize

    feats = tokenize(model, texts)
    states = model[0].auto_model(**feats, output_hidden_states=True).hidden_states
    return pooled_embedding(states, feats["attention_mask"], span, cls)


def load_all(cache) -> dict[bytes, np.ndarray]:
    """Every intact vector of an `EmbeddingCache` (O(cache); `encode` itself only probes the keys it needs)."""
    import sqlite3

    from mtl.engine.cache import _crc

    if not cache.path.exists():
        return {}
    with sqlite3.connect(cache.path) as con:
        return {k: np.frombuffer(v, dtype=np.float32) for k, v, c in con.execute("SELECT key, vec, crc FROM emb") if _crc(k, v) == c}
