"""The backbone on onnxruntime (CPU): a one-off ONNX export with its pooling, fp32 or int8.

int8 is onnxruntime's dynamic quantisation (int8 weights per channel, activations per tensor at run time):
2.0x the fp32 speed (whole process) on a Sapphire Rapids, but it keeps only 98.4 % of topic and 95.2 % of sentiment labels on
TweetEval test. No static int8 recipe tried (onnxruntime, NNCF/OpenVINO, with SmoothQuant and fp32 layers) kept
99 % of both at a speed gain; docs/int8.md has the numbers. The fp32 export is also what OpenVINO's bf16
backend (`mtl.engine.openvino_encoder`) converts.

The exported graph returns every layer's pooled output, (batch, layers+1, dim), so one export serves
any `--layers` choice; averaging and normalising happen in numpy (`backbone.combine_layers`). No torch
import at run time, which is what lets `mtl predict` start in under a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtl.engine.backbone import Backbone, pool_layers, quiet_transformers
from mtl.engine.tokens import encode_batches, tokenizer
from mtl.progress import log


class OnnxEncoder:
    def __init__(self, backbone: Backbone, mode: str, cache_dir: Path):
        import onnxruntime as ort

        model_path = export_onnx(backbone, cache_dir, quantized=(mode == "onnx-int8"))
        self.tokenizer = tokenizer(backbone)
        opts = ort.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        self.dim = int(self.session.get_outputs()[0].shape[-1])

    def encode(self, texts: list[str], span: tuple[int, int] | None = None) -> np.ndarray:
        return encode_batches(self.tokenizer, texts, self.dim, self._layer_means, span)

    def _layer_means(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def export_onnx(backbone: Backbone, cache_dir: Path, quantized: bool = False) -> Path:
    """Export the backbone with its pooling to ONNX once (fp32); int8 is derived from it."""
    folder = Path(cache_dir) / "onnx" / backbone.identity
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
    quiet_transformers()
    import warnings

    import torch
    from transformers import AutoModel

    from mtl.atomic import atomic_path

    log(f"exporting {backbone.name} to ONNX (once) -> {target}")
    # eager attention: the SDPA path does not survive tracing with a padding mask
    model = AutoModel.from_pretrained(str(backbone.folder), attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            states = self.inner(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
            return pool_layers(states, attention_mask, backbone.cls)

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
