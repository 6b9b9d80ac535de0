"""The backbone on OpenVINO (CPU): bf16 matmuls on CPUs with AMX or avx512_bf16 (`--backend bf16`).

The network is the project's own fp32 ONNX export (`onnx_encoder.export_onnx`: every layer's pooled
output), converted once to OpenVINO IR and cached as `<cache_dir>/openvino/<backbone identity>/layers.xml`
(+ `.bin`, weights kept fp32). The precision is a run-time choice, not a second file: OpenVINO's
`INFERENCE_PRECISION_HINT=bf16` lets the CPU plugin run the network in bf16 where it judges it safe
(the matmuls on AMX tiles on Sapphire Rapids, accumulating in fp32).

Measured (docs/performance.md, docs/int8.md; default heads, labels = argmax, agreement with the fp32 default's labels): TweetEval
val 99.95 % topic / 99.80 % sentiment, test 99.93 % / 99.86 % (min cosine 0.99992 to fp32), curated held-out
accuracy unchanged; whole-process embed of 4,000 tweets 2.2x the fp32 default (3.9x a SentenceTransformer script)
on a 2-core Sapphire Rapids with AMX. On a CPU without bf16 instructions OpenVINO ignores the hint and computes
in fp32 (`precision` says which runs; the vectors are then fp32-exact, and no faster than `onnx`).

Once exported: no torch, onnxruntime or pandas at run time; `openvino` is imported only here, so the fp32
default (`mtl predict -`) never loads it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mtl.engine.backbone import Backbone
from mtl.engine.tokens import encode_batches, tokenizer
from mtl.progress import log

# mode -> OpenVINO CPU precision hint (the IR is the same fp32 file for each)
PRECISION = {"openvino-bf16": "bf16"}


class OpenVinoEncoder:
    def __init__(self, backbone: Backbone, mode: str, cache_dir: Path):
        try:
            import openvino as ov
        except ImportError as exc:
            from mtl.errors import MTLError

            raise MTLError(f"--backend bf16 needs OpenVINO, a dependency of mtl: pip install 'openvino>=2026.4' ({exc})") from exc
        if mode not in PRECISION:
            raise ValueError(f"unknown OpenVINO mode {mode!r}")
        model_path = export_openvino(backbone, cache_dir)
        self.tokenizer = tokenizer(backbone)
        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": PRECISION[mode], "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = core.compile_model(core.read_model(str(model_path)), "CPU", config)
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # what runs: f32 without bf16
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.outputs[0]
        self.dim = int(self.output.get_partial_shape()[-1].get_length())

    def encode(self, texts: list[str], span: tuple[int, int] | None = None) -> np.ndarray:
        return encode_batches(self.tokenizer, texts, self.dim, self._layer_means, span)

    def _layer_means(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.request.infer({"input_ids": ids, "attention_mask": mask})[self.output]


def export_openvino(backbone: Backbone, cache_dir: Path) -> Path:
    """The fp32 ONNX export as OpenVINO IR, converted once: `<cache_dir>/openvino/<identity>/layers.xml` (+ .bin).

    Deterministic (the same ONNX file gives the same bytes) and written atomically (`atomic.atomic_path`), the
    .bin first, so a reader that finds the .xml always finds its complete .bin.
    """
    from mtl.engine.onnx_encoder import export_onnx

    target = Path(cache_dir) / "openvino" / backbone.identity / "layers.xml"
    if target.is_file() and target.with_suffix(".bin").is_file():
        return target
    onnx_path = export_onnx(backbone, cache_dir)
    import openvino as ov

    log(f"converting {onnx_path.name} to OpenVINO IR (once) -> {target}")
    model = ov.Core().read_model(str(onnx_path))
    _stable_names(model)
    _save_pair(model, target)
    return target


def _stable_names(model) -> None:
    """Rename nodes OpenVINO named itself (`Constant_19420`: a counter global to the process, `Constant_529_1` where
    that name was taken already) by their position, so the same ONNX file gives the same .xml bytes in any process,
    however many models it read before."""
    import re

    for i, op in enumerate(model.get_ordered_ops()):
        if re.fullmatch(rf"{re.escape(op.get_type_name())}(_\d+)+", op.get_friendly_name()):
            op.set_friendly_name(f"ov_{op.get_type_name()}_{i}")


def _save_pair(model, target: Path) -> None:
    """Save the IR as `target` (.xml) and its .bin through `atomic.atomic_path`, the .bin replaced first."""
    import openvino as ov

    from mtl.atomic import atomic_path

    with atomic_path(target, suffix=".xml") as xml, atomic_path(target.with_suffix(".bin"), suffix=".bin") as weights:
        try:  # OpenVINO names the .bin after the .xml; the inner context (the .bin) is replaced first on exit
            ov.save_model(model, str(xml), compress_to_fp16=False)  # keep the fp32 weights: bf16 is a run-time hint
            os.replace(xml.with_suffix(".bin"), weights)
        finally:
            xml.with_suffix(".bin").unlink(missing_ok=True)
