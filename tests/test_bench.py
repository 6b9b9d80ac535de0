"""The torch pipeline's options (`torch_encoder.Pipeline`) and the bench's own pieces: the batches the producer
cuts are the ones `tokens.padded` would make, the packed (unpadded) forward gives the padded one's vectors, and
the bench scripts import and run (their module paths broke once, unnoticed). GPU checks are marked `gpu`."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import ROOT, SENTENCES

from mtl.engine import torch_encoder as te
from mtl.engine.backbone import resolve_backbone
from mtl.engine.tokens import length_batches, padded, tokenizer
from mtl.errors import MTLError

sys.path.insert(0, str(ROOT / "bench"))
TEXTS = [*SENTENCES, "love it 😍 what a goal!!", "x", "a " * 300]  # short, long, truncated at the maximum length


def test_pipeline_options_parse_and_are_checked():
    p = te.Pipeline.parse("attention=varlen, budget=65536,rows=4096,compile=reduce-overhead,pad_to=16")
    assert (p.attention, p.token_budget, p.max_rows, p.compile, p.pad_to, p.packed) == ("varlen", 65536, 4096, "reduce-overhead", 16, True)
    assert te.Pipeline.parse("") == te.Pipeline() == te.PIPELINE  # the default: padded batches, no compilation
    for bad in ("attention=flash", "budget", "colour=red", "rows=0"):
        with pytest.raises(MTLError):
            te.Pipeline.parse(bad)


def test_producer_batches_are_what_tokens_padded_makes():
    tok = tokenizer(resolve_backbone())
    encs = tok.encode_batch(TEXTS)
    flat, starts, lens = te._flat_ids(encs)
    assert lens.tolist() == [len(e.ids) for e in encs]
    for idx in length_batches(lens, 64, 3):
        ids, mask, rows = te._padded(flat, starts, lens, idx)
        want_ids, want_mask = padded(encs, idx)
        assert rows == len(idx) and np.array_equal(ids, want_ids) and np.array_equal(mask, want_mask)
        ids16, mask16, _ = te._padded(flat, starts, lens, idx, pad_to=16)
        assert ids16.shape[0] % 16 == 0 and ids16.shape[1] % 16 == 0 and np.array_equal(ids16[: len(idx), : ids.shape[1]], ids)
        assert (mask16[len(idx) :].sum(1) == 1).all()  # dummy rows: one token, so pooling stays finite
        p_ids, pos, seg, offsets, lengths, (longest, shortest) = te._packed(flat, starts, lens, idx)
        assert np.array_equal(p_ids, want_ids[want_mask.astype(bool)]) and np.array_equal(np.diff(offsets), lens[idx])
        assert (pos[offsets[:-1]] == 0).all() and np.array_equal(np.bincount(seg), lens[idx]) and (longest, shortest) == (lens[idx].max(), lens[idx].min())


@pytest.fixture(scope="module")
def padded_fp32():
    return te.TorchEncoder(resolve_backbone(), "torch-fp32", "cpu")


SPANS = (None, (4, 6), (0, 2))


@pytest.fixture(scope="module")
def padded_vectors(padded_fp32):
    """The default pipeline's vectors of TEXTS for each span (computed once for every option compared with them)."""
    return {span: padded_fp32.encode(TEXTS, span) for span in SPANS}


@pytest.mark.parametrize("options", ["attention=njt", "pad_to=8,window=3"])
def test_pipeline_options_give_the_default_vectors_on_the_cpu(padded_fp32, padded_vectors, options):
    enc = te.TorchEncoder(resolve_backbone(), "torch-fp32", "cpu", te.Pipeline.parse(options))
    for span in SPANS:
        assert (enc.encode(TEXTS, span) * padded_vectors[span]).sum(1).min() >= 0.9999, (options, span)


def test_varlen_is_refused_where_it_cannot_run():
    with pytest.raises(MTLError, match="varlen"):
        te.TorchEncoder(resolve_backbone(), "torch-fp32", "cpu", te.Pipeline(attention="varlen"))


def test_bench_scripts_run_their_cheap_modes(tmp_path):
    """The bench's cheap modes measure what they say: the tokenizer mode the mean token count of the texts as the
    backbone reads them, the producer mode the batches the torch pipeline's producer cuts (here counted independently)."""
    import bench_encode

    from mtl.engine.tokens import TOKEN_BUDGET, backbone_text

    texts = bench_encode.bench_sentences(300)
    assert len(set(texts)) == 300
    slow = sum(not (t.isascii() and "&" not in t) for t in texts) / len(texts)
    assert 0.15 < slow < 0.35  # tweet-like: about a quarter take backbone_text's slow path, as TweetEval's test tweets do
    lengths = [len(e.ids) for e in tokenizer(resolve_backbone()).encode_batch([backbone_text(t) for t in texts])]
    info = bench_encode.run_mode("tokenizer", texts, "cpu", tmp_path / "x.npy")
    assert info["tokens_per_text"] == pytest.approx(np.mean(lengths)) and info["seconds"] > 0 and "failed" not in info
    for mode, options in (("producer", ""), ("producer+attention=njt", "attention=njt"), ("producer+rows=7", "rows=7")):
        pipe = te.Pipeline.parse(options)
        want = len(length_batches(lengths, pipe.token_budget or TOKEN_BUDGET["cpu"], pipe.max_rows))  # 300 texts: one window
        assert bench_encode.run_mode(mode, texts, "cpu", tmp_path / "x.npy")["batches"] == want, mode
    assert want >= 300 / 7  # rows=7 really cut more batches


def test_host_stand_in_goes_through_encode(monkeypatch, tmp_path):
    """bench_host times `encode()` with a stand-in network: what it measures must be encode's own host-side work. The
    stand-in gets each new text once, as the backbone reads it; its vectors land on their rows; the cache answers a rerun."""
    import bench_host

    from mtl.engine import embed
    from mtl.engine.tokens import backbone_text

    seen: list[list[str]] = []
    stand_in = bench_host.StandIn(True, "cuda")
    real = stand_in.encode
    stand_in.encode = lambda texts, span=None: seen.append(list(texts)) or real(texts, span)
    monkeypatch.setattr(embed, "load_encoder", lambda *a: stand_in)
    monkeypatch.setattr(embed, "device_for", lambda backend, device: "cuda")
    texts = [*TEXTS, TEXTS[0]]  # a repeated text is one row more, not one encode more
    x, stats = embed.encode(texts, embed.EmbedSpec(cache_dir=tmp_path))
    assert stats.mode == "torch-fp16" and (stats.encoded, stats.cached) == (len(TEXTS), 0)
    assert [t for call in seen for t in call] == [backbone_text(t) for t in TEXTS]
    np.testing.assert_array_equal(x[: len(TEXTS)], stand_in.pool[: len(TEXTS)])  # call order is row order here
    np.testing.assert_array_equal(x[-1], x[0])
    again, stats = embed.encode(texts, embed.EmbedSpec(cache_dir=tmp_path))
    assert (stats.encoded, stats.cached) == (0, len(TEXTS)) and len(seen) == 1
    np.testing.assert_array_equal(again, x)


@pytest.mark.gpu
@pytest.mark.parametrize("options", ["attention=njt", "attention=varlen", "attention=varlen,budget=65536,rows=4096", "pad_to=16"])
def test_gpu_pipeline_options_match_fp32(padded_fp32, options):
    try:
        enc = te.TorchEncoder(resolve_backbone(), "torch-fp16", "cuda", te.Pipeline.parse(options))
    except MTLError as exc:
        if "has no torch.nn.attention.varlen" in str(exc):
            pytest.skip(str(exc))
        raise
    for span in (None, (4, 6)):
        x, ref = enc.encode(TEXTS, span), padded_fp32.encode(TEXTS, span)
        assert (x * ref).sum(1).min() >= 0.999, (options, span)
