"""The backbone through transformers (SDPA attention) on cpu, cuda or mps, in fp32, fp16 or bf16.

The pipeline: texts are tokenised by the Rust `tokenizers` library in a producer thread
(`encode_batch` releases the GIL), sorted by length inside windows and cut into batches by the token
budget (`tokens.length_batches`). Each window's token ids are turned into one flat numpy array once, and
batches are cut from it with numpy (no per-row Python). Tensors go through pinned memory with
non-blocking copies; pooling and normalisation run on the device, and results stay there until the call
is done (one sync per call).

`Pipeline` holds the options the bench A/Bs on a GPU (`bench/bench_encode.py`, modes `torch-fp16+...`);
`PIPELINE`, the default, is transformers' BertModel on padded batches, no compilation:

- `attention="njt"`: unpadded (packed) batches: the layers run on (tokens, hidden) with no pad rows, and
  attention is `F.scaled_dot_product_attention` on nested jagged tensors (CUDA: flash / memory-efficient
  kernels with cumulative offsets; CPU: correct but slow, for checks). BertModel itself takes no nested
  tensors, and transformers' own padding-free path needs the flash-attn package, so the packed forward
  below drives BertModel's own modules (same weights, same LayerNorms and activation) layer by layer.
- `attention="varlen"`: the same packed forward with `torch.nn.attention.varlen.varlen_attn` (CUDA, fp16/bf16).
- `compile=MODE`: `torch.compile(mode=MODE, dynamic=True)` over forward + pooling; `pad_to` rounds the
  padded length up (fewer distinct shapes: each costs CUDA graphs a recording).
- `token_budget`, `max_rows`, `window`: the batching rule's knobs (default: `tokens.TOKEN_BUDGET[device]`,
  `tokens.MAX_ROWS`, `WINDOW`).
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass, fields, replace

import numpy as np

from mtl.engine.backbone import Backbone, pooled_embedding, quiet_transformers
from mtl.engine.tokens import MAX_ROWS, TOKEN_BUDGET, length_batches, tokenizer
from mtl.errors import MTLError

WINDOW = 4096  # texts tokenised and length-sorted together by the producer thread
DTYPES = {"torch-fp32": "float32", "torch-fp16": "float16", "torch-bf16": "bfloat16"}
ATTENTION = ("padded", "njt", "varlen")


@dataclass(frozen=True)
class Pipeline:
    """How the torch encoder batches and runs the network (see the module docstring)."""

    attention: str = "padded"  # padded | njt | varlen
    compile: str | None = None  # torch.compile mode: default, reduce-overhead, max-autotune-no-cudagraphs
    token_budget: int | None = None  # rows x longest row per batch; None: tokens.TOKEN_BUDGET[device]
    max_rows: int = MAX_ROWS
    window: int = WINDOW
    pad_to: int = 1  # padded batches: round the length up to a multiple of this

    @classmethod
    def parse(cls, text: str) -> Pipeline:
        """`attention=njt,compile=reduce-overhead,token_budget=65536` (short names: budget, rows) -> Pipeline."""
        alias = {"budget": "token_budget", "rows": "max_rows"}
        types = {f.name: f.type for f in fields(cls)}
        kw: dict = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            key = alias.get(key.strip(), key.strip())
            if not sep or key not in types:
                raise MTLError(f"torch pipeline option {part!r}: expected NAME=VALUE with NAME in {', '.join(types)}")
            kw[key] = value.strip() if "str" in str(types[key]) else int(value)
        return replace(cls(), **kw).checked()

    def checked(self) -> Pipeline:
        if self.attention not in ATTENTION:
            raise MTLError(f"torch pipeline: attention={self.attention!r}, expected one of {', '.join(ATTENTION)}")
        if self.pad_to < 1 or self.max_rows < 1 or self.window < 1:
            raise MTLError("torch pipeline: pad_to, max_rows and window must be >= 1")
        return self

    @property
    def packed(self) -> bool:
        return self.attention != "padded"


PIPELINE = Pipeline()  # what `mtl` uses; the bench swaps in others


class TorchEncoder:
    def __init__(self, backbone: Backbone, mode: str, device: str, pipeline: Pipeline | None = None):
        quiet_transformers()
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        self.pipeline = (pipeline or PIPELINE).checked()
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
        self.token_budget = self.pipeline.token_budget or TOKEN_BUDGET.get(self.device.type, 4096)
        if self.pipeline.packed:
            _check_packable(self.model, self.pipeline.attention, self.device.type)
        self._embed = self._packed_embed if self.pipeline.packed else self._padded_embed
        self._graphs = self.pipeline.compile is not None and "reduce-overhead" in self.pipeline.compile
        if self.pipeline.compile:
            self._embed = torch.compile(self._embed, mode=None if self.pipeline.compile == "default" else self.pipeline.compile, dynamic=True)

    # -- producer: tokenise, sort, cut into batches -------------------------------------------------------
    def _batches(self, texts: list[str], out: queue.Queue) -> None:
        """Producer thread: `iter_batches` into a bounded queue (an error is handed over, the consumer re-raises it)."""
        try:
            for item in iter_batches(texts, self.tokenizer, self.pipeline, self.token_budget, pin=self.device.type == "cuda"):
                out.put(item)
            out.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which re-raises it
            out.put(exc)

    # -- consumer: the network, pooling and normalisation on the device ------------------------------------
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
                idx, tensors, extra = item
                tensors = [t.to(self.device, non_blocking=True) for t in tensors]
                if self._graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                vec = self._embed(*tensors, extra, span)
                rows.append(idx)
                vecs.append(vec.clone() if self._graphs else vec)  # a CUDA graph's output is overwritten by its next replay
        producer.join()
        result = np.empty((len(texts), self.dim), dtype=np.float32)
        if vecs:
            result[np.concatenate(rows)] = torch.cat(vecs).cpu().numpy()  # one device sync for the whole call
        return result

    def _padded_embed(self, ids, mask, rows: int, span: tuple[int, int] | None):
        """transformers' BertModel on a right-padded batch; `rows` real rows (the rest pads the shape)."""
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=span is not None)
        states = out.hidden_states if span is not None else (out.last_hidden_state,)
        return pooled_embedding(states, mask, span, self.cls)[:rows]

    def _packed_embed(self, ids, pos, seg, offsets, lengths, max_min: tuple[int, int], span: tuple[int, int] | None):
        """The same network on packed tokens (no padding): (tokens,) ids -> (rows, dim) unit vectors.

        BertModel's own modules, in BertLayer's order: attention (q, k, v projections, attention over each
        text's tokens alone, output projection, residual, LayerNorm), then the feed-forward block.
        """
        import torch
        import torch.nn.functional as F

        emb = self.model.embeddings
        h = emb.word_embeddings(ids) + emb.token_type_embeddings.weight[0] + emb.position_embeddings(pos)
        h = emb.LayerNorm(h)
        n_layers = len(self.model.encoder.layer)
        lo, hi = span or (n_layers, n_layers)
        pooled = [self._pool_packed(h, seg, offsets, lengths)] if lo == 0 else []
        for i, layer in enumerate(self.model.encoder.layer, start=1):
            att = layer.attention
            sa = att.self
            shape = (h.shape[0], sa.num_attention_heads, sa.attention_head_size)
            q, k, v = sa.query(h).view(shape), sa.key(h).view(shape), sa.value(h).view(shape)
            ctx = self._attend(q, k, v, offsets, max_min).reshape(h.shape[0], -1)
            a = att.output.LayerNorm(att.output.dense(ctx) + h)
            h = layer.output.LayerNorm(layer.output.dense(layer.intermediate(a)) + a)
            if lo <= i <= hi:
                pooled.append(self._pool_packed(h, seg, offsets, lengths))
            if i >= hi:
                break
        return F.normalize(torch.stack(pooled, 1).mean(1), dim=1)

    def _attend(self, q, k, v, offsets, max_min: tuple[int, int]):
        """Attention of each text's tokens over its own tokens: (tokens, heads, head_dim) in and out."""
        import torch
        import torch.nn.functional as F

        if self.pipeline.attention == "varlen":
            from torch.nn.attention.varlen import varlen_attn

            return varlen_attn(q, k, v, offsets, offsets, max_min[0], max_min[0])
        nj = [torch.nested.nested_tensor_from_jagged(t, offsets, max_seqlen=max_min[0], min_seqlen=max_min[1]).transpose(1, 2) for t in (q, k, v)]
        return F.scaled_dot_product_attention(*nj).transpose(1, 2).values()

    def _pool_packed(self, h, seg, offsets, lengths):
        """Mean (or CLS) pooling per text of packed hidden states, in fp32."""
        import torch

        if self.cls:
            return h[offsets[:-1].long()].float()
        sums = torch.zeros(lengths.shape[0], h.shape[1], dtype=torch.float32, device=h.device).index_add_(0, seg, h.float())
        return sums / lengths.unsqueeze(1)


def iter_batches(texts: list[str], tok, pipeline: Pipeline, token_budget: int, pin: bool = False):
    """The producer's work: tokenise a window, sort it, cut it by the token budget; yields (rows, tensors, extra).

    `tensors` are what the network takes (padded: ids, mask; packed: ids, positions, rows, offsets, lengths),
    in pinned memory with `pin`; `extra` is a plain value (padded: real rows; packed: (max, min) length).
    """
    import torch

    for w in range(0, len(texts), pipeline.window):
        flat, starts, lens = _flat_ids(tok.encode_batch(texts[w : w + pipeline.window]))
        for idx in length_batches(lens, token_budget, pipeline.max_rows):
            arrays = _packed(flat, starts, lens, idx) if pipeline.packed else _padded(flat, starts, lens, idx, pipeline.pad_to)
            tensors = [torch.from_numpy(a) for a in arrays[:-1]]
            if pin:
                tensors = [t.pin_memory() for t in tensors]
            yield idx + w, tensors, arrays[-1]


def _check_packable(model, attention: str, device: str) -> None:
    """The packed forward is written for BERT-style encoders (absolute positions, no decoder parts)."""
    cfg = model.config
    if cfg.model_type != "bert" or getattr(cfg, "position_embedding_type", "absolute") != "absolute" or cfg.is_decoder:
        raise MTLError(f"torch pipeline attention={attention}: only for BERT encoders with absolute positions (got {cfg.model_type})")
    if attention == "varlen":
        try:
            from torch.nn.attention.varlen import varlen_attn  # noqa: F401
        except ImportError:
            raise MTLError("torch pipeline attention=varlen: this torch has no torch.nn.attention.varlen") from None
        if device != "cuda" or model.dtype not in _half_dtypes():
            raise MTLError("torch pipeline attention=varlen: CUDA in fp16 or bf16 only (use attention=njt elsewhere)")


def _half_dtypes():
    import torch

    return (torch.float16, torch.bfloat16)


def _flat_ids(encs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A window's token ids as one flat int64 array, with each text's start and length (ids read once per text)."""
    ids = [e.ids for e in encs]
    lens = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lens.sum()))
    return flat, np.cumsum(lens) - lens, lens


def _padded(flat, starts, lens, idx, pad_to: int = 1) -> tuple[np.ndarray, np.ndarray, int]:
    """(ids, attention mask, rows) for rows `idx`: right-padded to the longest (rounded up to `pad_to`), as `tokens.padded`.

    With `pad_to` > 1 the row count is rounded up too, with one-token dummy rows (dropped after pooling).
    """
    n = len(idx)
    width = -(-int(lens[idx].max()) // pad_to) * pad_to
    height = -(-n // pad_to) * pad_to if pad_to > 1 else n
    lengths = np.ones(height, dtype=np.int64)
    lengths[:n] = lens[idx]
    mask = np.arange(width) < lengths[:, None]
    ids = np.zeros(mask.shape, dtype=np.int64)
    src = np.zeros(height, dtype=np.int64)
    src[:n] = starts[idx]
    ids[mask] = flat[(src[:, None] + np.arange(width))[mask]]
    return ids, mask.astype(np.int64), n


def _packed(flat, starts, lens, idx) -> tuple[np.ndarray, ...]:
    """Rows `idx` packed end to end: ids, positions, row of each token, offsets (int32), lengths; (max, min) length."""
    lengths = lens[idx]
    offsets = np.zeros(len(idx) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    pos = np.arange(total, dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    ids = flat[np.repeat(starts[idx], lengths) + pos]
    seg = np.repeat(np.arange(len(idx), dtype=np.int64), lengths)
    return ids, pos, seg, offsets.astype(np.int32), lengths.astype(np.float32), (int(lengths.max()), int(lengths.min()))
