"""Where the backbone runs: CPU features, devices, backends, and what `auto` means here (the one home of these rules).

Backends (the `--backend` flag; each is a *mode* such as `onnx-fp32`, part of the cache key):

- `torch`   transformers (SDPA attention) in fp32, through the token-budget pipeline: the reference numbers.
- `onnx`    the same network exported once to ONNX and run by onnxruntime in fp32 (same vectors to
            ~1e-7; no torch import, so `mtl predict` starts in under a second).
- `fp16`    the torch pipeline in half precision (CUDA).
- `bf16`    torch with bfloat16 weights (opt-in: min cosine ~0.997 to fp32).
- `int8`    onnxruntime with int8 weights and activations (opt-in; see `mtl.engine.onnx_encoder`).
- `auto`    CUDA: `fp16` through the pipeline. Anything else: `onnx`, fp32-exact on every CPU.
            `$MTL_BACKEND` overrides what `auto` means (the test suite uses it to force a backend).

Why not bf16 on CPUs that have avx512_bf16, and not bf16 on Ampere+ GPUs: measured, bf16 gives min
cosine 0.9968 to fp32 (below the 0.999 the project promises for its default) and on a 2-core
avx512_bf16 CPU only 1.17x onnx-fp32 throughput, with a 7 s torch start instead of 0.8 s.
fp16 keeps min cosine >= 0.9995 on the same texts.
"""

from __future__ import annotations

import functools
import os
import platform
import sys

from mtl.errors import MTLError

BACKENDS = ("auto", "torch", "onnx", "bf16", "fp16", "int8")
DEVICES = ("auto", "cpu", "cuda", "mps")
MODES = {"torch": "torch-fp32", "onnx": "onnx-fp32", "bf16": "torch-bf16", "fp16": "torch-fp16", "int8": "onnx-int8"}
CPU_BACKENDS = ("onnx", "int8")  # onnxruntime on the CPU, whatever --device says


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def has_bf16() -> bool:
    """x86 CPUs with avx512_bf16 or AMX, where bf16 matmuls are fast."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def has_int8_dot() -> bool:
    """x86 CPUs with int8 dot-product instructions (VNNI or AMX), where int8 matmuls are fast."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def _maybe_accelerator() -> bool:
    """Cheap check (no torch import) whether cuda or mps could exist here."""
    return sys.platform == "darwin" or os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia")


def cuda_available() -> bool:
    """CUDA usable by torch (checked without importing torch where no NVIDIA driver exists)."""
    if not _maybe_accelerator():
        return False
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str = "auto") -> str:
    """`auto` picks cuda, then mps, then cpu; asking for one that is absent is an error."""
    if device not in DEVICES:
        raise MTLError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    if device == "cpu" or (device == "auto" and not _maybe_accelerator()):
        return "cpu"
    if device in ("auto", "cuda") and cuda_available():
        return "cuda"
    import torch

    if device in ("auto", "mps") and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    if device == "auto":
        return "cpu"
    raise MTLError(f"--device {device}: not available on this machine; use --device cpu or auto")


def device_for(backend: str, device: str) -> str:
    """The device a backend runs on: ONNX backends always on the CPU, the rest where `device` resolves."""
    return "cpu" if backend in CPU_BACKENDS else resolve_device(device)


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


def fastest_cpu_backend() -> tuple[str, str]:
    """The opt-in backend that is fastest on this CPU for its accuracy, and why (`mtl info` says it; `auto` stays fp32)."""
    if has_int8_dot():
        return "int8", "int8 dot products (VNNI/AMX): static int8 keeps >= 99 % of labels at several times fp32 speed"
    return "onnx", "no VNNI/AMX: int8 matmuls gain little here, so fp32 ONNX is the one to use"


def resolve_backend(backend: str = "auto", device: str = "cpu") -> str:
    """Turn a `--backend` choice into a concrete mode such as `onnx-fp32` (part of the cache key)."""
    if backend not in BACKENDS:
        raise MTLError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = auto_backend(device)[0]
    if backend in CPU_BACKENDS and device not in ("cpu", "auto"):
        raise MTLError(f"--backend {backend} runs on the CPU; use --backend torch or fp16 with --device {device}")
    if backend == "fp16" and device == "cpu":
        raise MTLError("--backend fp16 needs a GPU (--device cuda or mps); on a CPU use onnx, torch, bf16 or int8")
    return MODES[backend]
