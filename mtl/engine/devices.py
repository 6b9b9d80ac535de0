"""Where the backbone runs: CPU features, devices, backends, and what `auto` means here (the one home of these rules).

Backends (the `--backend` flag; each is a *mode* such as `onnx-fp32`, part of the cache key):

- `torch`   transformers (SDPA attention) in fp32, through the token-budget pipeline: the reference numbers.
- `onnx`    the same network exported once to ONNX and run by onnxruntime in fp32 (same vectors to
            ~1e-7; no torch import, so `mtl predict` starts in under a second).
- `fp16`    the torch pipeline in half precision (CUDA).
- `bf16`    OpenVINO with bf16 matmuls on CPUs with AMX or avx512_bf16 (opt-in; `mtl.engine.openvino_encoder`):
            the fastest CPU backend that keeps the labels (TweetEval val: 99.95 % topic / 99.80 % sentiment
            of the fp32 labels, min cosine 0.99997). Without bf16 instructions OpenVINO computes in fp32.
- `int8`    onnxruntime dynamic int8 (opt-in; `mtl.engine.onnx_encoder`): fast on every CPU, but it keeps
            only ~98 % of topic and ~95 % of sentiment labels on TweetEval test (docs/int8.md: no int8 recipe
            tried reached 99 % on both at a speed gain).
- `auto`    CUDA: `fp16` through the pipeline. Anything else: `onnx`, fp32-exact on every CPU.
            `$MTL_BACKEND` overrides what `auto` means (the test suite uses it to force a backend).

Why `auto` is not bf16 on CPUs that have it: bf16 still changes a few labels (5 of 2,000 TweetEval val
sentiment labels) and the default promises fp32-exact vectors; `mtl info` names bf16 as the fast choice.
Modes are cache keys: `openvino-bf16` replaced the older `torch-bf16` (min cosine 0.9968, 7 s start),
so vectors cached under the old name are never mixed with the new ones.
"""

from __future__ import annotations

import functools
import os
import platform
import sys

from mtl.errors import MTLError

BACKENDS = ("auto", "torch", "onnx", "bf16", "fp16", "int8")
DEVICES = ("auto", "cpu", "cuda", "mps")
MODES = {"torch": "torch-fp32", "onnx": "onnx-fp32", "bf16": "openvino-bf16", "fp16": "torch-fp16", "int8": "onnx-int8"}
CPU_BACKENDS = ("onnx", "int8", "bf16")  # onnxruntime / OpenVINO on the CPU, whatever --device says


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
    """The device a backend runs on: ONNX and OpenVINO backends always on the CPU, the rest where `device` resolves."""
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
    """The opt-in backend that is fastest on this CPU while keeping the labels, and why (`mtl info` says it; `auto` stays fp32).

    Measured on a 2-core Sapphire Rapids VM with AMX (docs/performance.md; whole-process embed of 4,000 tweets, median
    of 3): bf16 2.2x the fp32 default, int8 (onnxruntime dynamic) 2.0x; labels kept on TweetEval test: bf16 99.93 % topic
    / 99.86 % sentiment, int8 98.4 % / 95.2 %. Not measured: CPUs without AMX; there the line says so.
    """
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "bf16", ("OpenVINO bf16 on AMX: 2.2x the fp32 default and 99.9 % of labels kept (measured on a Sapphire Rapids); "
                        "int8 is about as fast (2.0x) but keeps only 95 % of sentiment labels")
    if has_bf16():
        return "bf16", ("OpenVINO bf16 on avx512_bf16 (no AMX; speed not measured): keeps ~99.9 % of labels; "
                        "int8 keeps only ~95 % of sentiment labels")
    if has_int8_dot():
        return "onnx", ("no bf16 instructions (not measured; OpenVINO bf16 would run fp32); --backend int8 uses VNNI and is faster "
                        "but keeps only ~95 % of sentiment labels on tweets, so fp32 ONNX is the choice that keeps them")
    return "onnx", ("no bf16, VNNI or AMX (AVX2-class; not measured): OpenVINO bf16 would run fp32 and int8 keeps only ~95 % "
                    "of sentiment labels, so fp32 ONNX is the one to use")


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
