"""Running the backbone: devices, backends, length-sorted token-budget batches, the torch pipeline, the ONNX export.

Backends (the `--backend` flag; each is a *mode* such as `onnx-fp32`, part of the cache key):

- `torch`   transformers (SDPA attention) in fp32, through the pipeline below: the reference numbers.
- `onnx`    the same network exported once to ONNX and run by onnxruntime in fp32 (same vectors to
            ~1e-7; no torch import, so `mtl predict` starts in under a second).
- `fp16`    the torch pipeline in half precision (CUDA).
- `bf16`    torch with bfloat16 weights (opt-in: min cosine ~0.997 to fp32).
- `int8`    onnxruntime with dynamically quantised int8 weights (opt-in: cosine ~0.99 to fp32).
- `auto`    CUDA: `fp16` through the pipeline. Anything else: `onnx`, fp32-exact on every CPU.
            `$MTL_BACKEND` overrides what `auto` means (the test suite uses it to force a backend).

Why not bf16 on CPUs that have avx512_bf16, and not bf16 on Ampere+ GPUs: measured, bf16 gives min
cosine 0.9968 to fp32 (below the 0.999 the project promises for its default) and on a 2-core
avx512_bf16 CPU only 1.17x onnx-fp32 throughput, with a 7 s torch start instead of 0.8 s.
fp16 keeps min cosine >= 0.9995 on the same texts.

The torch pipeline: texts are tokenised by the Rust `tokenizers` library in a producer thread
(`encode_batch` releases the GIL), sorted by length inside windows and cut into batches by a
*token budget* (rows x longest row), so short texts form big batches and long ones small batches
with almost no padding. Tensors go through pinned memory with non-blocking copies, results stay on
the device until the window is done (one sync per window, not per batch).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from pathlib import Path

import numpy as np

from mtl.backbone import Backbone, local_folder, max_seq_length, pool_layers, pooled_embedding, pooling
from mtl.errors import MTLError

BACKENDS = ("auto", "torch", "onnx", "bf16", "fp16", "int8")
DEVICES = ("auto", "cpu", "cuda", "mps")
MODES = {"torch": "torch-fp32", "onnx": "onnx-fp32", "bf16": "torch-bf16", "fp16": "torch-fp16", "int8": "onnx-int8"}
FP32_EXACT = ("torch-fp32", "onnx-fp32")  # cosine >= 0.9999 to SentenceTransformer.encode in fp32

# Tokens per batch (rows x longest row). CPU: batch shape hardly matters to onnxruntime here (1,200
# tweets, same run: 1024 tokens 171-187 sentences/s, 32 rows 172-187), while bigger budgets raised its
# peak RSS (4096 tokens: 406-740 MB vs 358 MB). CUDA, H100, 50k sentences in one run: 32k tokens 17.0k
# sentences/s, 16k 13.7k (bench/reference/encode-cuda-h100.json); an older probe had 64k at 11.3k. With MAX_ROWS
# 1024 short sentences reach about 32k tokens anyway.
TOKEN_BUDGET = {"cpu": 1024, "cuda": 32768, "mps": 8192}
MAX_ROWS = 1024
WINDOW = 4096  # texts tokenised and length-sorted together by the producer thread


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    """True on x86 CPUs with avx512_bf16 or AMX (where bf16 matmuls are fast)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def _maybe_accelerator() -> bool:
    """Cheap check (no torch import) whether cuda or mps could exist here."""
    return sys.platform == "darwin" or os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia")


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


def auto_backend(device: str) -> tuple[str, str]:
    """What `auto` means on `device` (a resolved device), and why."""
    forced = os.environ.get("MTL_BACKEND", "").strip()
    if forced and forced != "auto":
        if forced not in BACKENDS:
            raise MTLError(f"MTL_BACKEND={forced!r}: expected one of {', '.join(BACKENDS)}")
        return forced, "forced by $MTL_BACKEND"
    if device == "cuda":
        return "fp16", "CUDA: the token-budget torch pipeline in fp16 (min cosine >= 0.999 to fp32)"
    if device == "mps":
        return "torch", "Apple GPU: the torch pipeline in fp32"
    return "onnx", "CPU: onnxruntime fp32 (fp32-exact and a fast start on every CPU; bf16 and int8 are opt-in)"


def resolve_backend(backend: str = "auto", device: str = "cpu") -> str:
    """Turn a `--backend` choice into a concrete mode such as `onnx-fp32` (part of the cache key)."""
    if backend not in BACKENDS:
        raise MTLError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = auto_backend(device)[0]
    if backend in ("onnx", "int8") and device not in ("cpu", "auto"):
        raise MTLError(f"--backend {backend} runs on the CPU; use --backend torch or fp16 with --device {device}")
    if backend == "fp16" and device == "cpu":
        raise MTLError("--backend fp16 needs a GPU (--device cuda or mps); on a CPU use onnx, torch, bf16 or int8")
    return MODES[backend]


def backend_of(mode: str) -> str:
    """The `--backend` name of a mode (`onnx-fp32` -> `onnx`), e.g. to re-encode as a checkpoint was trained."""
    return {m: b for b, m in MODES.items()}[mode]


def device_for(backend: str, device: str) -> str:
    """The device a backend runs on: ONNX backends always on the CPU, the rest where `device` resolves."""
    return "cpu" if backend in ("onnx", "int8") else resolve_device(device)


def length_batches(lengths, token_budget: int | None = None, max_rows: int | None = None) -> list[np.ndarray]:
    """Indices in batches of similar length: sorted by length, each batch's rows x longest row <= token_budget.

    The one batching rule for every encoder (ONNX, torch, fine-tuned): with little padding, no work
    is spent on pad tokens. A single row longer than the budget still forms its own batch.
    """
    lengths = np.asarray(lengths)
    order = np.argsort(lengths, kind="stable")
    batches, start, n = [], 0, len(order)
    while start < n:
        end = start + 1
        while end < n and (max_rows is None or end - start < max_rows) and (
            token_budget is None or (end - start + 1) * int(lengths[order[end]]) <= token_budget
        ):
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


def _quiet_hf() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_seq_length(folder))
    return tok


def _padded(encs, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, attention mask) int64 arrays for rows `idx`, right-padded to the longest."""
    lens = np.array([len(encs[i].ids) for i in idx])
    mask = (np.arange(lens.max()) < lens[:, None]).astype(np.int64)
    ids = np.zeros(mask.shape, dtype=np.int64)
    ids[mask.astype(bool)] = np.concatenate([encs[i].ids for i in idx])
    return ids, mask


class TorchEncoder:
    """The backbone through transformers (SDPA attention) on cpu, cuda or mps, in fp32, fp16 or bf16."""

    def __init__(self, backbone: Backbone, mode: str, device: str, token_budget: int | None = None):
        _quiet_hf()
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        folder = local_folder(backbone)
        dtype = {"torch-fp32": torch.float32, "torch-fp16": torch.float16, "torch-bf16": torch.bfloat16}[mode]
        try:
            self.model = AutoModel.from_pretrained(str(folder), attn_implementation="sdpa", dtype=dtype).to(device).eval()
        except OSError as exc:
            raise MTLError(f"backbone {backbone.name!r}: cannot load ({str(exc).splitlines()[0]})") from None
        self.tokenizer = _tokenizer(folder)
        self.cls = pooling(folder) == "cls"
        self.device = torch.device(device)
        self.dim = int(self.model.config.hidden_size)
        self.token_budget = token_budget or TOKEN_BUDGET.get(self.device.type, 4096)
        self.max_rows = MAX_ROWS
        self.chunk_size = 16384 if self.device.type == "cuda" else 512  # texts per cache write (see embed.encode)

    def _batches(self, texts: list[str], out: queue.Queue) -> None:
        """Producer thread: tokenise a window, sort it, cut it by the token budget, hand over (pinned) tensors."""
        import torch

        pin = self.device.type == "cuda"
        try:
            for w in range(0, len(texts), WINDOW):
                encs = self.tokenizer.encode_batch(texts[w : w + WINDOW])
                for idx in length_batches([len(e.ids) for e in encs], self.token_budget, self.max_rows):
                    ids, mask = (torch.from_numpy(a) for a in _padded(encs, idx))
                    if pin:
                        ids, mask = ids.pin_memory(), mask.pin_memory()
                    out.put((idx + w, ids, mask))
            out.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            out.put(exc)

    def encode(self, texts: list[str], span: tuple[int, int] | None = None) -> np.ndarray:
        import torch

        batches: queue.Queue = queue.Queue(maxsize=8)
        producer = threading.Thread(target=self._batches, args=(texts, batches), daemon=True)
        producer.start()
        rows, vecs = [], []
        with torch.inference_mode():
            while (item := batches.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                idx, ids, mask = item
                ids, mask = ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)
                out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=span is not None)
                states = out.hidden_states if span is not None else (out.last_hidden_state,)
                rows.append(idx)
                vecs.append(pooled_embedding(states, mask, span, self.cls))
        producer.join()
        result = np.empty((len(texts), self.dim), dtype=np.float32)
        if vecs:
            result[np.concatenate(rows)] = torch.cat(vecs).cpu().numpy()  # one device sync for the whole call
        return result


class OnnxEncoder:
    """onnxruntime on a one-off ONNX export of the backbone, with the `tokenizers` library."""

    def __init__(self, backbone: Backbone, mode: str, cache_dir: Path, token_budget: int | None = None):
        import onnxruntime as ort

        folder = local_folder(backbone)
        model_path = export_onnx(backbone, cache_dir, quantized=(mode == "onnx-int8"))
        self.tokenizer = _tokenizer(folder)
        opts = ort.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        self.dim = int(self.session.get_outputs()[0].shape[-1])
        self.token_budget = token_budget or TOKEN_BUDGET["cpu"]
        self.max_rows = MAX_ROWS
        self.chunk_size = 512

    def encode(self, texts: list[str], span: tuple[int, int] | None = None) -> np.ndarray:
        from mtl.backbone import combine_layers

        encs = self.tokenizer.encode_batch(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for idx in length_batches([len(e.ids) for e in encs], self.token_budget, self.max_rows):
            ids, mask = _padded(encs, idx)
            out[idx] = combine_layers(self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0], span)
        return out


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

    folder = local_folder(backbone)
    cls = pooling(folder) == "cls"
    print(f"exporting {backbone.name} to ONNX (once) -> {target}", file=sys.stderr)
    # eager attention: the SDPA path does not survive tracing with a padding mask
    model = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.inner(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
            return pool_layers(states, attention_mask, cls)

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
