"""The backbone through transformers (SDPA attention) on cpu, cuda or mps, in fp32, fp16 or bf16.

The pipeline: texts are tokenised by the Rust `tokenizers` library in a producer thread
(`encode_batch` releases the GIL), sorted by length inside windows and cut into batches by the token
budget (`tokens.length_batches`). Tensors go through pinned memory with non-blocking copies; pooling and
normalisation run on the device, and results stay there until the call is done (one sync per call).
"""

from __future__ import annotations

import queue
import threading

import numpy as np

from mtl.engine.backbone import Backbone, pooled_embedding, quiet_transformers
from mtl.engine.tokens import MAX_ROWS, TOKEN_BUDGET, length_batches, padded, tokenizer
from mtl.errors import MTLError

WINDOW = 4096  # texts tokenised and length-sorted together by the producer thread
DTYPES = {"torch-fp32": "float32", "torch-fp16": "float16", "torch-bf16": "bfloat16"}


class TorchEncoder:
    def __init__(self, backbone: Backbone, mode: str, device: str):
        quiet_transformers()
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            model = AutoModel.from_pretrained(str(backbone.folder), attn_implementation="sdpa", dtype=getattr(torch, DTYPES[mode]))
        except OSError as exc:
            raise MTLError(f"backbone {backbone.name!r}: cannot load ({str(exc).splitlines()[0]})") from None
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer(backbone)
        self.cls = backbone.cls
        self.device = torch.device(device)
        self.dim = int(self.model.config.hidden_size)
        self.token_budget = TOKEN_BUDGET.get(self.device.type, 4096)

    def _batches(self, texts: list[str], out: queue.Queue) -> None:
        """Producer thread: tokenise a window, sort it, cut it by the token budget, hand over (pinned) tensors."""
        import torch

        pin = self.device.type == "cuda"
        try:
            for w in range(0, len(texts), WINDOW):
                encs = self.tokenizer.encode_batch(texts[w : w + WINDOW])
                for idx in length_batches([len(e.ids) for e in encs], self.token_budget, MAX_ROWS):
                    ids, mask = (torch.from_numpy(a) for a in padded(encs, idx))
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
