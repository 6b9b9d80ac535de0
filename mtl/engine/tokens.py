"""From text to the backbone's input: what it reads (`backbone_text`), the tokenizer, and the one batching rule.

`length_batches` sorts texts by token length and cuts them by a *token budget* (rows x longest row), so
short texts form big batches and long ones small batches with almost no padding. Every encoder uses it:
ONNX, the torch pipeline and adapted (fine-tuned) models.
"""

from __future__ import annotations

import html
import re
import unicodedata

import numpy as np

from mtl.engine.backbone import Backbone, combine_layers

# Tokens per batch (rows x longest row). CPU: batch shape hardly matters to onnxruntime here (1,200
# tweets, same run: 1024 tokens 171-187 sentences/s, 32 rows 172-187), while bigger budgets raised its
# peak RSS (4096 tokens: 406-740 MB vs 358 MB). CUDA, H100, 50k sentences in one run: 32k tokens 17.0k
# sentences/s, 16k 13.7k (bench/reference/encode-cuda-h100.json); an older probe had 64k at 11.3k. With MAX_ROWS
# 1024 short sentences reach about 32k tokens anyway.
TOKEN_BUDGET = {"cpu": 1024, "cuda": 32768, "mps": 8192}
MAX_ROWS = 1024

_ESCAPE = re.compile(r"\\u([0-9a-fA-F]{4})")
_SKIP = {"\ufe0f", "\u200d"}  # emoji variation selector and joiner: no meaning of their own
# The only characters `backbone_text` changes: the two above and everything from U+2190 (arrows, symbols,
# pictographs, skin tones, flag letters). One regex finds them in C, so ordinary text costs nothing.
_CANDIDATES = re.compile("[\u200d\ufe0f\u2190-\U0010ffff]")


def backbone_text(text: str) -> str:
    """The text as the backbone should read it.

    The backbone's word-piece vocabulary has no emoji: "love it 😍" reads as "love it [UNK]",
    losing the sentiment. Pictographs are spelled out by their Unicode names, skin-tone and
    flag letters are dropped, and two scraping artefacts seen in tweets are undone: literal
    `\\u2019`-style escapes and HTML entities (`&amp;`). Plain ASCII text is returned unchanged.
    """
    if text.isascii() and "\\u" not in text and "&" not in text:
        return text
    text = html.unescape(_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text))
    if any("\ud800" <= ch <= "\udfff" for ch in text):  # escaped surrogate pairs -> one character
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    spelled = False

    def replace(m: re.Match) -> str:
        nonlocal spelled
        ch = m.group()
        if ch in _SKIP or unicodedata.category(ch) == "Sk" and ord(ch) >= 0x1F3FB:
            return ""
        if unicodedata.category(ch) == "So":
            spelled = True
            name = unicodedata.name(ch, "")
            return "" if name.startswith("REGIONAL INDICATOR") else f" {name.lower()} "
        return ch

    text = _CANDIDATES.sub(replace, text)
    return " ".join(text.split()) if spelled else text


def tokenizer(backbone: Backbone):
    """The backbone's fast (Rust) tokenizer: no padding, truncated at the backbone's maximum length."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(backbone.folder / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(backbone.max_length)
    return tok


def length_batches(lengths, token_budget: int | None = None, max_rows: int | None = None) -> list[np.ndarray]:
    """Indices in batches of similar length: sorted by length, each batch's rows x longest row <= token_budget.

    With little padding, no work is spent on pad tokens. A single row longer than the budget still
    forms its own batch.
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


def encode_batches(tok, texts: list[str], dim: int, layer_means, span: tuple[int, int] | None) -> np.ndarray:
    """The CPU encoders' loop (ONNX, OpenVINO): tokenise, cut `length_batches` by the CPU token budget, run
    `layer_means(ids, mask)` (the network: (batch, layers+1, dim) pooled states) on each and combine `span`'s layers."""
    encs = tok.encode_batch(texts)
    out = np.empty((len(texts), dim), dtype=np.float32)
    for idx in length_batches([len(e.ids) for e in encs], TOKEN_BUDGET["cpu"], MAX_ROWS):
        out[idx] = combine_layers(layer_means(*padded(encs, idx)), span)
    return out


def padded(encs, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, attention mask) int64 arrays for rows `idx` of tokenizer encodings, right-padded to the longest."""
    lens = np.array([len(encs[i].ids) for i in idx])
    mask = (np.arange(lens.max()) < lens[:, None]).astype(np.int64)
    ids = np.zeros(mask.shape, dtype=np.int64)
    ids[mask.astype(bool)] = np.concatenate([encs[i].ids for i in idx])
    return ids, mask
