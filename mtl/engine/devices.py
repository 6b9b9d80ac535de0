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


def _cpuinfo(field: str) -> str | None:
    """The value of the first `field` line of /proc/cpuinfo (None where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1] for line in fh if line.startswith(field)), None)
    except OSError:
        return None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo has none)."""
    return frozenset((_cpuinfo("flags") or "").split())


def cpu_name() -> str:
    return (_cpuinfo("model name") or "").strip() or platform.processor() or platform.machine()


def has_bf16() -> bool:
    """x86 CPUs with avx512_bf16 or AMX, where bf16 matmuls are fast."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def has_int8_dot() -> bool:
    """x86 CPUs with int8 dot-product instructions (VNNI or AMX), where int8 matmuls are fast."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def maybe_accelerator() -> bool:
    """Cheap check (no torch import) whether cuda or mps could exist here."""
    return sys.platform == "darwin" or os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia")


@functools.cache
def accelerator() -> str | None:
    """The accelerator torch can use here, "cuda" or "mps", or None (the one probe; torch is imported only where a
    driver is seen)."""
    if not maybe_accelerator():
        return None
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return None


def cuda_available() -> bool:
    """CUDA usable by torch (checked without importing torch where no NVIDIA driver exists)."""
    return accelerator() == "cuda"


def gpu_name() -> str:
    """What `mtl info` and the benches say about the GPU."""
    found = accelerator()
    if found == "cuda":
        import torch

        p = torch.cuda.get_device_properties(0)
        return f"{p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor} (CUDA {torch.version.cuda})"
    if found == "mps":
        return "Apple GPU (mps)"
    return "none usable by torch" if maybe_accelerator() else "none (no NVIDIA driver or Apple GPU seen; torch not imported)"


def resolve_device(device: str = "auto") -> str:
    """`auto` picks cuda, then mps, then cpu; asking for one that is absent is an error."""
    if device not in DEVICES:
        raise MTLError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    found = accelerator()
    if device == "auto":
        return found or "cpu"
    if device == found:
        return device
    raise MTLError(f"--device {device}: not available on this machine; use --device cpu or auto")


def device_for(backend: str, device: str, cluster_gpus: float | None = None) -> str:
    """The device a backend runs on: ONNX and OpenVINO backends always on the CPU, the rest where `device` resolves.

    `cluster_gpus`: resolve on a Ray cluster with that many GPUs instead of on this machine (`--engine ray`).
    """
    if backend in CPU_BACKENDS:
        return "cpu"
    if cluster_gpus is None:
        return resolve_device(device)
    if device == "cuda" and not cluster_gpus:
        raise MTLError("--device cuda: the Ray cluster has no GPU; use --device cpu or auto")
    return "cuda" if cluster_gpus and device in ("auto", "cuda") else "cpu"


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

    Measured (docs/performance.md; whole-process `mtl embed` of 4,000 tweets against the fp32 default, median of 3;
    labels kept on TweetEval test's 12,284 tweets):
    - 2-core Sapphire Rapids VM with AMX: bf16 2.2x, int8 (onnxruntime dynamic) 2.0x; bf16 99.93 % topic / 99.86 %
      sentiment, int8 98.4 % / 95.2 % (bench/reference/encode-cpu-spr-2core.json);
    - 2-core AMD EPYC with avx512_bf16 and no AMX: bf16 1.55x (3.2x a SentenceTransformer script), int8 2.0x; bf16
      99.93 % / 99.87 %, int8 98.4 % / 95.2 % (bench/reference/encode-cpu-epyc-2core.json).
    Not measured: CPUs without bf16 instructions; there the line says so.
    """
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "bf16", ("OpenVINO bf16 on AMX: 2.2x the fp32 default and 99.9 % of labels kept (measured on a Sapphire Rapids); "
                        "int8 is about as fast (2.0x) but keeps only 95 % of sentiment labels")
    if has_bf16():
        return "bf16", ("OpenVINO bf16 on avx512_bf16 (no AMX): 1.55x the fp32 default and 99.9 % of labels kept (measured on an "
                        "AMD EPYC); int8 is faster (2.0x) but keeps only 95 % of sentiment labels")
    if has_int8_dot():
        return "onnx", ("no bf16 instructions (not measured; OpenVINO bf16 would run fp32); --backend int8 uses VNNI and is faster "
                        "but keeps only ~95 % of sentiment labels on tweets, so fp32 ONNX is the choice that keeps them")
    return "onnx", ("no bf16, VNNI or AMX (AVX2-class; not measured): OpenVINO bf16 would run fp32 and int8 keeps only ~95 % "
                    "of sentiment labels, so fp32 ONNX is the one to use")


def checkpoint_backend(backend: str, trained_mode: str | None) -> str:
    """The backend that embeds texts for a checkpoint: `auto` gives a checkpoint trained on int8 vectors int8 again (its
    heads learnt int8's vectors); any other gets this machine's `auto` (fp32-exact on every CPU). An explicit choice wins."""
    return "int8" if backend == "auto" and trained_mode == MODES["int8"] else backend


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
