"""Corpus scale: the SQLite cache, streaming predict/embed with resumable shards, bad input, the Ray engine."""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa  # a hard dependency: a failed import must fail the suite, not skip it
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, linked_cache, mtl_main
from helpers import load_all

from mtl import inputs
from mtl.corpus import stream
from mtl.engine.cache import EmbeddingCache


def short_texts(n: int, tag: str = "") -> list[str]:
    """Unique short sentences (few word pieces: quick to encode), about sport or politics."""
    words = ["The team won the cup", "Parliament passed the bill", "The striker scored twice", "The minister resigned today"]
    return [f"{words[i % 4]} {tag}{i}" for i in range(n)]


def vectors(n: int, seed: int = 0) -> tuple[list[bytes], np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = rng.bytes(32 * n)
    return [raw[i : i + 32] for i in range(0, 32 * n, 32)], rng.standard_normal((n, 384)).astype(np.float32)


def read_out(folder: Path) -> list[dict]:
    files = sorted(folder.glob("part-*"))
    if files and files[0].suffix == ".jsonl":
        return [json.loads(line) for f in files for line in f.read_text().splitlines()]
    return pq.read_table(folder).to_pylist()


# -- the cache ---------------------------------------------------------------------------------------------
def test_cache_answers_only_the_keys_asked_for_through_its_index(tmp_path):
    cache = EmbeddingCache(tmp_path, "backbone", "mode")
    keys, x = vectors(3000)
    cache.put(keys[:2000], x[:2000])
    cache.put(keys[1500:], x[1500:])  # overlapping writes are fine
    got = cache.get_many([keys[5], keys[2999], b"\0" * 32, keys[5]])
    assert set(got) == {keys[5], keys[2999]}
    np.testing.assert_array_equal(got[keys[2999]], x[2999])
    with sqlite3.connect(cache.path) as con:
        plan = " ".join(str(r) for r in con.execute("EXPLAIN QUERY PLAN SELECT vec FROM emb WHERE key IN (?, ?)", (keys[0], keys[1])))
        assert con.execute("SELECT count(*) FROM emb").fetchone()[0] == 3000
    assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan  # a probe per key, never a scan


class _no_full_scan:
    """A connection that fails the test on any query without a WHERE clause (a full read of the cache)."""

    def __init__(self, con):
        self.con = con

    def __getattr__(self, name):
        return getattr(self.con, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.con.__exit__(*exc)

    def execute(self, sql, *args):
        if sql.lstrip().upper().startswith("SELECT") and "WHERE" not in sql.upper():
            pytest.fail(f"encode read the whole cache: {sql}")
        return self.con.execute(sql, *args)


def test_encode_never_reads_the_whole_cache(tmp_path, cache_dir, monkeypatch):
    from mtl.engine.embed import EmbedSpec, encode

    first, stats = encode(["The cup final was great.", "The vote was close."], EmbedSpec(backend="onnx", cache_dir=cache_dir))
    asked, real = [], EmbeddingCache.get_many
    monkeypatch.setattr(EmbeddingCache, "get_many", lambda self, keys: asked.append(len(keys)) or real(self, keys))
    monkeypatch.setattr(sqlite3, "connect", lambda *a, real_connect=sqlite3.connect, **kw: _no_full_scan(real_connect(*a, **kw)))
    again, stats = encode(["The vote was close.", "A new sentence."], EmbedSpec(backend="onnx", cache_dir=cache_dir))
    assert asked == [2] and (stats.cached, stats.encoded) == (1, 1)  # the two keys asked for, by index, nothing more
    np.testing.assert_array_equal(again[0], first[1])


def test_a_corrupt_row_is_dropped_and_its_text_re_encoded(tmp_path):
    cache = EmbeddingCache(tmp_path, "backbone", "mode")
    keys, x = vectors(10)
    cache.put(keys, x)
    with sqlite3.connect(cache.path) as con:
        blob = bytearray(con.execute("SELECT vec FROM emb WHERE key = ?", (keys[3],)).fetchone()[0])
        blob[100] ^= 0xFF  # one flipped bit pattern inside the vector: only the CRC can tell
        con.execute("UPDATE emb SET vec = ? WHERE key = ?", (bytes(blob), keys[3]))
    with pytest.warns(UserWarning, match="1 corrupt entries dropped"):
        got = cache.get_many(keys)
    assert set(got) == set(keys) - {keys[3]}
    assert keys[3] not in cache.get_many(keys)  # deleted, so the caller re-encodes and re-stores it


def test_a_corrupt_cache_file_is_set_aside_and_rebuilt(tmp_path):
    cache = EmbeddingCache(tmp_path, "backbone", "mode")
    keys, x = vectors(5)
    cache.put(keys, x)
    cache.path.write_bytes(b"this is not an SQLite database" * 200)
    with pytest.warns(UserWarning, match="is corrupt"):
        assert cache.get_many(keys) == {}
    assert list(cache.dir.glob("cache.sqlite.corrupt-*"))
    cache.put(keys[:2], x[:2])
    assert set(cache.get_many(keys)) == set(keys[:2])


def test_old_npz_shards_are_imported_once(tmp_path):
    cache = EmbeddingCache(tmp_path, "backbone", "mode")
    keys, x = vectors(4)
    cache.dir.mkdir(parents=True)
    np.savez(cache.dir / "shard-old.npz", keys=np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, 32), emb=x)
    got = cache.get_many(keys)
    np.testing.assert_array_equal(np.stack([got[k] for k in keys]), x)
    assert not list(cache.dir.glob("shard-*.npz"))


def test_concurrent_writer_processes_lose_nothing(tmp_path):
    code = textwrap.dedent(
        f"""
        import sys, numpy as np
        from mtl.engine.cache import EmbeddingCache
        cache = EmbeddingCache({str(tmp_path)!r}, "backbone", "mode")
        me = int(sys.argv[1])
        for step in range(40):  # many small transactions, interleaved with the other writers
            ids = [1000 + (me * 40 + step) * 25 + j for j in range(25)] + [j for j in range(25)]  # 25 own keys + 25 shared ones
            keys = [i.to_bytes(32, "big") for i in ids]
            cache.put(keys, np.array([[float(i)] * 384 for i in ids], dtype=np.float32))
            assert len(cache.get_many(keys)) == 50
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], cwd=ROOT) for i in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    stored = load_all(EmbeddingCache(tmp_path, "backbone", "mode"))
    assert len(stored) == 4 * 40 * 25 + 25  # own keys + the 25 every writer wrote
    assert all(float(v[0]) == int.from_bytes(k, "big") for k, v in stored.items())


def test_prune_drops_the_least_recently_used(tmp_path):
    cache = EmbeddingCache(tmp_path, "backbone", "mode")
    keys, x = vectors(100)
    cache.put(keys, x)
    with sqlite3.connect(cache.path) as con:
        con.execute("UPDATE emb SET used = used - 30")  # all unused for a month...
    cache.get_many(keys[:20])  # ...except 20 read today
    assert cache.prune(max_entries=50) == 50
    assert set(keys[:20]) <= set(load_all(cache))  # reading every row does not mark entries as used
    assert cache.prune(older_than_days=10) == 30
    assert set(load_all(cache)) == set(keys[:20])


def test_cache_info_and_prune_commands(tmp_path):
    cache = EmbeddingCache(tmp_path, "backbone", "mode")
    keys, x = vectors(300)
    cache.put(keys, x)
    r = mtl_main("cache", "info", "--cache-dir", str(tmp_path))
    assert r.returncode == 0 and "backbone/mode: 300 entries" in r.stdout
    r = mtl_main("cache", "prune", "--max-entries", "120", "--cache-dir", str(tmp_path))
    assert r.returncode == 0 and "removed 180 of 300 entries" in r.stdout and "120 entries" in r.stdout
    r = mtl_main("cache", "prune", "--cache-dir", str(tmp_path))
    assert r.returncode == 2 and "give --max-entries" in r.stderr


# -- reading a corpus ------------------------------------------------------------------------------------
def write_formats(folder: Path, texts: list[str]) -> dict[str, Path]:
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    files = {k: folder / f"in.{k}" for k in ("txt", "csv", "jsonl", "parquet")}
    files["txt"].write_text("\n".join(texts) + "\n")
    with open(files["csv"], "w", newline="") as fh:
        csv.writer(fh).writerows([["id", "text"], *[[i, t] for i, t in enumerate(texts)]])
    files["jsonl"].write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(texts)))
    pq.write_table(pa.table({"text": texts}), files["parquet"], row_group_size=7)
    return files


def test_every_input_format_gives_the_same_rows_in_order(tmp_path):
    texts = [f"Sentence {i}, with \"quotes\" and ü" if i % 5 else "" for i in range(40)]
    for k, path in write_formats(tmp_path, texts).items():
        assert [t for b in inputs.read_texts(str(path)) for t in b] == texts, k
    # a glob over several files, cut into chunks that straddle the file boundaries
    (tmp_path / "b.parquet").write_bytes((tmp_path / "in.parquet").read_bytes())
    files = inputs.expand([str(tmp_path / "*.parquet")])
    assert [Path(f).name for f in files] == ["b.parquet", "in.parquet"]
    chunks = list(inputs.iter_chunks(files, 13))
    assert [len(c[0]) for c in chunks] == [13] * 6 + [2]
    assert [t for c in chunks for t in c[0]] == texts + texts
    assert [s for c in chunks for s in c[1]][39:41] == [str(tmp_path / "b.parquet"), str(tmp_path / "in.parquet")]
    assert inputs.count_rows(files) == 80


def test_csv_text_may_span_lines(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text('text,label\n"two\nlines",a\nplain,b\n')
    assert [t for b in inputs.read_texts(str(path)) for t in b] == ["two\nlines", "plain"]


def _png(d: Path) -> list[str]:
    (d / "photo.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))  # a binary file named .txt
    return [str(d / "photo.txt")]


@pytest.mark.parametrize(
    "setup, expected",
    [
        (lambda d: [str(d / "nothing-*.parquet")], "nothing-*.parquet: no file matches this pattern"),
        (lambda d: (pq.write_table(pa.table({"body": ["x"]}), d / "a.parquet"), [str(d / "a.parquet")])[1], "a.parquet: no 'text' column (columns are: body)"),
        (lambda d: ((d / "bad.parquet").write_bytes(b"PAR1 not really"), [str(d / "bad.parquet")])[1], "bad.parquet: cannot read as Parquet"),
        (lambda d: (pq.write_table(pa.table({"text": ["ok"]}), d / "good.parquet"), (d / "broken.parquet").write_bytes(b"\0" * 64),
                    [str(d / "good.parquet"), str(d / "broken.parquet")])[2], "broken.parquet: cannot read as Parquet"),
        (lambda d: (pq.write_table(pa.table({"text": [1, 2]}), d / "ints.parquet"), [str(d / "ints.parquet")])[1],
         "ints.parquet: column 'text' holds int64, expected strings"),
        (lambda d: ((d / "a.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n'), [str(d / "a.jsonl")])[1], "a.jsonl: line 2: not valid JSON"),
        (lambda d: ((d / "n.jsonl").write_text('{"text": "ok"}\n\n{"text": 42}\n'), [str(d / "n.jsonl")])[1],
         "n.jsonl: line 3: 'text' is int, expected a string"),
        (lambda d: ((d / "a.csv").write_text("body\nx\n"), [str(d / "a.csv")])[1], "a.csv: no 'text' column (columns are: body)"),
        (_png, "photo.txt: line 1 is not valid UTF-8 (byte 0x89); save the file as UTF-8"),
        (lambda d: [str(d)], "is a directory, expected a file; pass its files or a glob"),
    ],
    ids=["empty-glob", "parquet-without-text", "unreadable-parquet", "one-bad-shard-of-two", "parquet-int-text", "bad-jsonl",
         "jsonl-number-text", "csv-without-text", "binary-txt", "directory"],
)
@pytest.mark.parametrize("out", [True, False], ids=["corpus", "small"])
def test_bad_corpus_input_is_one_line(tmp_path, trained, setup, expected, out):
    inputs = setup(tmp_path)
    r = mtl_main("predict", *inputs, *(["--out", str(tmp_path / "out")] if out else []), "--model", str(trained["path"]))
    assert r.returncode == 2, r.stderr
    *before, last = [line for line in r.stderr.splitlines() if line.strip()]
    assert expected in last and last.startswith("mtl predict: error: "), r.stderr
    assert all(line.startswith("predict:") for line in before), r.stderr  # at most the progress bar (a bad row deep in a file)
    assert not list((tmp_path / "out").glob("part-*")) and not r.stdout  # checked before any work


def test_empty_stdin_is_one_line(trained):
    r = mtl_main("predict", "-", "--model", str(trained["path"]), stdin="")
    assert r.returncode == 2 and r.stderr == "mtl predict: error: <stdin>: no text to label (empty input)\n" and not r.stdout, r.stderr


def test_a_full_disk_under_out_is_one_line(tmp_path, trained, cache_dir):
    texts = short_texts(200, "disk")
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n")
    out = tmp_path / "out"

    def small_files() -> None:  # every file this process grows stops at 8 kB: EFBIG, as a full disk gives ENOSPC
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))

    r = subprocess.run(
        [sys.executable, "-m", "mtl", "predict", str(src), "--out", str(out), "--with-embeddings", "--model", str(trained["path"]), "--cache-dir", str(cache_dir)],
        cwd=ROOT, capture_output=True, text=True, preexec_fn=small_files, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("mtl predict: error: ") and "cannot write part-00000000.parquet (File too large" in last, last
    assert not list(out.glob("part-*")) and not list(out.glob(".part-*"))  # no half shard, no temp file left


# -- streaming predict / embed ---------------------------------------------------------------------------
def test_streaming_predict_gives_the_rows_of_the_small_path(tmp_path, trained, cache_dir):
    texts = short_texts(60, "same") + ["", "Le match était superbe 😍"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n")
    common = ["--model", str(trained["path"]), "--cache-dir", str(cache_dir)]
    small = mtl_main("predict", str(src), "--format", "jsonl", *common)
    assert small.returncode == 0, small.stderr
    r = mtl_main("predict", str(src), "--format", "jsonl", "--out", str(tmp_path / "j"), "--chunk-size", "25", *common)
    assert r.returncode == 0, r.stderr
    want = [json.loads(line) for line in small.stdout.splitlines()]
    got = read_out(tmp_path / "j")
    assert len(sorted((tmp_path / "j").glob("part-*.jsonl"))) == 3
    assert [{k: v for k, v in row.items() if k != "source"} for row in got] == want  # same dicts, probabilities rounded alike
    r = mtl_main("predict", str(src), "--out", str(tmp_path / "p"), "--chunk-size", "25", "--with-embeddings", *common)
    assert r.returncode == 0, r.stderr
    rows = read_out(tmp_path / "p")
    assert list(rows[0]) == ["source", "text", "topic", "topic_probs", "sentiment", "sentiment_probs", "embedding", "error"]
    assert [r["topic"] for r in rows] == [w["topic"] for w in want]
    assert rows[60]["error"] == "empty text" and rows[60]["embedding"] is None and rows[60]["topic_probs"] is None
    np.testing.assert_allclose([list(r["sentiment_probs"].values()) for r in rows[:3]], [list(w["sentiment_probs"].values()) for w in want[:3]], atol=1e-4)


def test_embed_writes_the_vectors_encode_gives(tmp_path, cache_dir):
    from mtl.engine.embed import EmbedSpec, encode

    texts = short_texts(30, "vec")
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    args = ["embed", str(src), "--chunk-size", "16", "--backend", "onnx", "--layers", "4-6", "--cache-dir", str(cache_dir)]
    r = mtl_main(*args, "--out", str(tmp_path / "e"))
    assert r.returncode == 0, r.stderr
    assert not list((cache_dir / "embeddings").rglob("cache.sqlite"))  # a corpus run keeps no vectors by default
    r = mtl_main(*args, "--out", str(tmp_path / "e2"), "--cache")
    assert r.returncode == 0, r.stderr
    got = np.array([row["embedding"] for row in read_out(tmp_path / "e")], dtype=np.float32)
    ref, stats = encode(texts, EmbedSpec(backend="onnx", cache_dir=cache_dir, layers="4-6"))
    assert stats.encoded == 0  # the --cache run filled the cache
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(np.array([row["embedding"] for row in read_out(tmp_path / "e2")], dtype=np.float32), ref)
    small = mtl_main(*args)  # without --out: JSONL on stdout, the same vectors
    assert small.returncode == 0, small.stderr
    np.testing.assert_array_equal(np.array([json.loads(line)["embedding"] for line in small.stdout.splitlines()], dtype=np.float32), ref)


def test_an_interrupted_run_resumes_without_losing_or_repeating_rows(tmp_path, trained, cache_dir, monkeypatch):
    import warnings

    from mtl.cli import main

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # main() rebinds it

    texts = short_texts(230, "resume")
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": texts}), src)
    out = tmp_path / "out"
    args = ["predict", str(src), "--out", str(out), "--chunk-size", "50", "--model", str(trained["path"]), "--cache-dir", str(cache_dir)]
    real_write, calls = stream.write_shard, []

    def ctrl_c_on_third_shard(path, *rest):
        calls.append(path.name)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real_write(path, *rest)

    monkeypatch.setattr(stream, "write_shard", ctrl_c_on_third_shard)
    assert main(args) == 130
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["_manifest.json", "part-00000000.parquet", "part-00000001.parquet"]
    assert not json.loads((out / "_manifest.json").read_text()).get("complete")
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    monkeypatch.setattr(stream, "write_shard", real_write)
    assert main(args) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-0000000[01]*")} == kept  # finished shards were not redone
    assert [r["text"] for r in read_out(out)] == texts
    assert json.loads((out / "_manifest.json").read_text())["rows"] == 230
    assert main(args[:-4] + ["--chunk-size", "60"] + args[-4:]) == 2  # other settings: refused, not mixed in


def test_two_runs_into_one_folder_are_refused(tmp_path, trained):
    from filelock import FileLock

    src = tmp_path / "in.txt"
    src.write_text("One sentence.\n")
    out = tmp_path / "out"
    out.mkdir()
    with FileLock(str(out / ".lock")):  # as a running `mtl predict --out out` holds it
        r = mtl_main("predict", str(src), "--out", str(out), "--model", str(trained["path"]))
    assert r.returncode == 2 and "another mtl run is writing here" in r.stderr


def test_a_rerun_resumes_only_the_same_run_and_redoes_only_unreadable_shards(tmp_path, trained, cache_dir):
    """What a rerun into an existing --out does: nothing when complete; refuses another input, model or setting, an
    unreadable manifest and a folder that is not an mtl output; redoes exactly the shards it cannot read."""
    from mtl.checkpoint import load_checkpoint, save_checkpoint

    texts = short_texts(30, "rerun")
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n")
    out = tmp_path / "out"
    args = ["predict", str(src), "--out", str(out), "--chunk-size", "10", "--model", str(trained["path"]), "--cache-dir", str(cache_dir)]
    assert mtl_main(*args).returncode == 0
    shards = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    assert len(shards) == 3

    r = mtl_main(*args)
    assert r.returncode == 0 and f"{out}: already complete (30 rows); nothing to do" in r.stderr, r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")} == shards

    ckpt = load_checkpoint(trained["path"])
    other = tmp_path / "other.safetensors"  # the same heads, other bytes: another model as far as a rerun can tell
    save_checkpoint(other, ckpt.state, {**{k: v for k, v in ckpt.meta.items() if k != "format"}, "note": "retrained"})
    refusals = {"model": [*args[:-4], "--model", str(other), *args[-2:]], "chunk_size": [*args[:4], "--chunk-size", "15", *args[6:]]}
    for what, argv in refusals.items():
        r = mtl_main(*argv)
        assert r.returncode == 2 and f"{out}: holds a different run (differs in {what})" in r.stderr, (what, r.stderr)

    manifest = json.loads((out / stream.MANIFEST).read_text())
    (out / "part-00000001.parquet").write_bytes(b"PAR1 cut short")  # e.g. a copy that was interrupted
    (out / stream.MANIFEST).write_text(json.dumps({k: v for k, v in manifest.items() if k != "complete"}))
    r = mtl_main(*args)
    assert r.returncode == 0 and "(2 finished shards kept from an earlier run)" in r.stderr, r.stderr
    now = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    assert [n for n in now if now[n] != shards[n]] == ["part-00000001.parquet"]
    assert [row["text"] for row in read_out(out)] == texts

    src.write_text("\n".join(texts + ["one more line"]) + "\n")
    r = mtl_main(*args)
    assert r.returncode == 2 and "differs in inputs" in r.stderr, r.stderr

    (out / stream.MANIFEST).write_text("{not json")
    r = mtl_main(*args)
    assert r.returncode == 2 and f"{out / stream.MANIFEST}: unreadable manifest; delete {out} or choose another --out" in r.stderr

    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    r = mtl_main(*args[:3], str(foreign), *args[4:])
    assert r.returncode == 2 and f"{foreign}: not empty and not an mtl output folder" in r.stderr, r.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]


# -- corpus scale (slow: 5,000 rows in 10 shards, read in several row groups) ---------------------------------
N_BIG, CHUNK_BIG = 5_000, 500


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory, trained):
    """A 5,000-row streaming predict in 10 shards, SIGKILLed once about half its shards are written, then rerun."""
    tmp = tmp_path_factory.mktemp("big")
    texts = short_texts(N_BIG, "big")
    src = tmp / "corpus.parquet"
    pq.write_table(pa.table({"text": texts}), src, row_group_size=1300)  # row groups straddle the chunks
    cache = linked_cache(tmp / "cache")
    out = tmp / "out"
    cmd = [sys.executable, "-m", "mtl", "predict", str(src), "--out", str(out), "--chunk-size", str(CHUNK_BIG), "--model", str(trained["path"]),
           "--cache-dir", str(cache)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.time() + 1200
    while len(list(out.glob("part-*"))) < 5 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    return {"texts": texts, "src": src, "out": out, "before": before, "rerun": rerun, "trained": trained}


@pytest.mark.slow
def test_sigkill_halfway_then_rerun_loses_and_repeats_no_row(killed_and_resumed):
    run = killed_and_resumed
    assert 5 <= len(run["before"]) < 10, "the kill should land halfway"
    assert run["rerun"].returncode == 0, run["rerun"].stderr[-2000:]
    assert f"({len(run['before'])} finished shards kept from an earlier run)" in run["rerun"].stderr
    assert {n: (run["out"] / n).stat().st_mtime_ns for n in run["before"]} == run["before"]
    got = pq.read_table(run["out"], columns=["text"]).column("text").to_pylist()
    assert got == run["texts"]  # every row once, in input order
    assert sorted(p.name for p in run["out"].iterdir() if p.name != ".lock") == ["_manifest.json"] + [f"part-{i:08d}.parquet" for i in range(10)]


@pytest.mark.slow
def test_ray_engine_with_two_workers_gives_the_rows_of_the_local_engine(killed_and_resumed, tmp_path):
    """`ray job submit` to a `ray start` cluster (a head and a worker node, every server on 127.0.0.1; see test_ray.py):
    the 5,000-row predict, stopped halfway and submitted again, keeps its finished shards and ends with the local rows."""
    import psutil
    from conftest import need_ray

    need_ray()
    from test_ray import LOOPBACK, LoopbackCluster, same_rows

    run = killed_and_resumed
    cache = linked_cache(tmp_path / "cache")  # an empty cache: the Ray workers encode every row themselves
    out = tmp_path / "ray"
    predict = [sys.executable, "-m", "mtl", "predict", str(run["src"]), "--out", str(out), "--engine", "ray", "--workers", "2",
               "--chunk-size", str(CHUNK_BIG), "--model", str(run["trained"]["path"]), "--cache-dir", str(cache)]
    cluster = LoopbackCluster()
    with cluster:
        assert {ip for _, ip, _ in cluster.listening()} <= LOOPBACK
        r = cluster.job("submit", "--submission-id", "first", "--working-dir", ".", "--no-wait", "--", *predict)
        assert r.returncode == 0, r.stderr[-3000:]
        deadline = time.time() + 900
        while not list(out.glob("part-*")) and time.time() < deadline:  # the driver and both actors are running
            time.sleep(0.1)
        driver = cluster.driver_of(out)
        # `ray job stop` takes seconds to start and reach the driver (Ray sends it SIGTERM, then SIGKILL): sent at the
        # first shard, it lands about halfway through the 10
        stop = cluster.job("stop", "--no-wait", "first", wait=False)
        listening = cluster.listening()
        assert stop.wait(timeout=300) == 0, stop.stderr.read()[-3000:]
        assert psutil.wait_procs([driver], timeout=60)[0]
        assert listening and any(name == "raylet" for name, _, _ in listening)
        assert {ip for _, ip, _ in listening} <= LOOPBACK, sorted(listening)
        before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
        assert 1 <= len(before) < 10, f"the stop should land halfway: {len(before)} of 10 shards written"
        assert not json.loads((out / "_manifest.json").read_text()).get("complete")
        again = cluster.job("submit", "--submission-id", "again", "--working-dir", ".", "--", *predict)
        assert again.returncode == 0 and "Job 'again' succeeded" in again.stdout + again.stderr, (again.stdout + again.stderr)[-3000:]
        assert f"{N_BIG} rows in 10 shards ({len(before)} finished shards kept from an earlier run)" in again.stdout, again.stdout[-3000:]
        assert "Ray, 2 workers" in again.stdout
        actors = cluster.job_actors()
        uploaded = cluster.uploaded()
        assert {"mtl", "pyproject.toml"} <= uploaded and not uploaded & {".git", ".venv", ".cache", "runs"}, uploaded  # .gitignore and Ray's defaults
    assert not cluster.processes()
    assert len({a["node_id"] for a in actors if a["class_name"] == "Labeller"}) == 2  # the worker node labelled chunks too
    assert {n: (out / n).stat().st_mtime_ns for n in before} == before
    assert sorted(p.name for p in out.iterdir() if p.name != ".lock") == ["_manifest.json"] + [f"part-{i:08d}.parquet" for i in range(10)]
    same_rows(out, run["out"])
