"""Corpus-scale `predict` and `embed`: stream the input in fixed-size chunks, write one output shard per chunk.

Inputs: text files (one text per line), CSV / JSONL / Parquet with a `text` column, `-` for stdin,
several paths or globs. Rows are read in order and cut into chunks of `chunk_size`; chunk i
becomes `OUT/part-<i>.parquet` (or `.jsonl`), written atomically. `OUT/_manifest.json` records
the inputs and settings, so a rerun after a crash or Ctrl-C checks it is the same job and redoes
only the chunks without a shard (vectors encoded before the crash come back from the cache).
Memory holds one chunk at a time, whatever the corpus size.

`label_table` turns one chunk into the output table; the Ray engine (`mtl.scale`) calls the same
function in its actors, so both engines write the same rows.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mtl.atomic import atomic_path, write_text
from mtl.data import MAX_CHARS
from mtl.errors import MTLError

if TYPE_CHECKING:
    import pyarrow as pa

CHUNK_SIZE = 10_000  # rows per output shard: ~15 MB of vectors, ~1 min of encoding on 2 CPU cores
ENCODE_SLICE = 512  # texts per encode() call inside a chunk on a CPU (the cache's write unit; keeps the bar moving)
ENCODE_SLICE_GPU = 8192  # on a GPU: one call has one device sync, and 512 tweets are about one batch there
MANIFEST = "_manifest.json"  # leading "_" / ".": pyarrow and Ray skip these when reading OUT as a dataset
READ_BATCH = 8192


def kind(path: str) -> str:
    """Input format from the file name: parquet, csv, jsonl or txt (anything else, and stdin)."""
    suffix = Path(path).suffix.lower()
    return {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix, "txt")


def expand(sources: list[str]) -> list[str]:
    """Paths in the given order, each glob expanded and sorted; missing files and empty globs are errors."""
    out: list[str] = []
    for src in sources:
        if src == "-":
            out.append(src)
        elif glob.has_magic(src):
            hits = sorted(p for p in glob.glob(src, recursive=True) if os.path.isfile(p))
            if not hits:
                raise MTLError(f"{src}: no file matches this pattern")
            out += hits
        elif not os.path.exists(src):
            raise MTLError(f"{src}: file not found")
        elif os.path.isdir(src):
            raise MTLError(f"{src}: is a directory; pass its files or a glob such as '{src.rstrip('/')}/*.parquet'")
        else:
            out.append(src)
    return out


# -- reading -------------------------------------------------------------------------------------------
def _arrow_error(path: str, what: str, exc: Exception) -> MTLError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return MTLError(f"{path}: cannot read as {what} ({first[:200]})")


def _no_text(path: str, names: list[str]) -> MTLError:
    return MTLError(f"{path}: no 'text' column (columns are: {', '.join(names) or 'none'})")


def check_input(path: str) -> None:
    """Cheap up-front check (header / footer only), so a bad file fails before hours of work."""
    k = kind(path)
    if path == "-" or k == "txt":
        return
    if k == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError) as exc:
            raise _arrow_error(path, "Parquet", exc) from None
        if "text" not in schema.names:
            raise _no_text(path, schema.names)
        if not (pa.types.is_string(schema.field("text").type) or pa.types.is_large_string(schema.field("text").type)):
            raise MTLError(f"{path}: column 'text' holds {schema.field('text').type}, expected strings")
    elif k == "csv":
        import csv

        try:
            with open(path, encoding="utf-8-sig", newline="") as fh:
                header = next(csv.reader(fh), [])
        except UnicodeDecodeError:
            raise MTLError(f"{path}: line 1 is not valid UTF-8; save the file as UTF-8") from None
        except OSError as exc:
            raise MTLError(f"{path}: cannot read ({exc.strerror or exc})") from None
        if "text" not in header:
            raise _no_text(path, header)


def _read_txt(path: str) -> Iterator[list[str]]:
    """Lines as `str.splitlines` cuts them (what `mtl predict` and Ray's read_text do), read line by line."""
    fh = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115 (closed below unless stdin)
    batch: list[str] = []
    try:
        for n, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise MTLError(f"{path}: line {n} is not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8") from None
            batch += line.splitlines() or [""]
            if len(batch) >= READ_BATCH:
                yield batch
                batch = []
    except OSError as exc:
        raise MTLError(f"{path}: cannot read ({exc.strerror or exc})") from None
    finally:
        if fh is not sys.stdin.buffer:
            fh.close()
    if batch:
        yield batch


def _read_jsonl(path: str) -> Iterator[list[str | None]]:
    batch: list[str | None] = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue  # blank lines carry no record (pyarrow's reader skips them too)
            try:
                rec = json.loads(raw)
            except ValueError as exc:
                raise MTLError(f"{path}: line {n}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
            if not isinstance(rec, dict) or "text" not in rec:
                raise MTLError(f"{path}: line {n}: expected a JSON object with a 'text' field")
            if rec["text"] is not None and not isinstance(rec["text"], str):
                raise MTLError(f"{path}: line {n}: 'text' is {type(rec['text']).__name__}, expected a string")
            batch.append(rec["text"])
            if len(batch) >= READ_BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def _read_arrow(path: str, k: str) -> Iterator[list[str | None]]:
    import pyarrow as pa

    try:
        if k == "parquet":
            import pyarrow.parquet as pq

            batches = pq.ParquetFile(path).iter_batches(batch_size=READ_BATCH, columns=["text"])
        else:
            import pyarrow.csv as pacsv

            batches = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=1 << 22),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(include_columns=["text"], column_types={"text": pa.string()}),
            )
        for b in batches:
            yield b.column(0).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise _arrow_error(path, "Parquet" if k == "parquet" else "CSV", exc) from None


def read_texts(path: str) -> Iterator[list[str | None]]:
    """Batches of texts from one input, in file order (None = missing text)."""
    check_input(path)
    k = kind(path)
    if k in ("parquet", "csv"):
        return _read_arrow(path, k)
    return _read_jsonl(path) if k == "jsonl" else _read_txt(path)


def source_name(path: str) -> str:
    return path if path == "-" else os.path.abspath(path)


def iter_chunks(paths: list[str], chunk_size: int) -> Iterator[tuple[list[str | None], list[str]]]:
    """(texts, sources) for consecutive chunks of exactly `chunk_size` rows (the last may be shorter)."""
    texts: list[str | None] = []
    sources: list[str] = []
    for path in paths:
        name = source_name(path)
        for batch in read_texts(path):
            texts += batch
            sources += [name] * len(batch)
            while len(texts) >= chunk_size:
                yield texts[:chunk_size], sources[:chunk_size]
                del texts[:chunk_size], sources[:chunk_size]
    if texts:
        yield texts, sources


def read_all(path: str) -> list[str]:
    """Every text of one input (for the small-input `mtl predict` path), missing texts as ''."""
    return [clip(t) for b in read_texts(path) for t in b]


def count_rows(paths: list[str]) -> int | None:
    """Rows in the corpus when that is cheap (Parquet footers, line counts); None for CSV and stdin."""
    total = 0
    for p in paths:
        k = kind(p)
        if p == "-" or k == "csv":
            return None
        if k == "parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(p).metadata.num_rows
        else:
            with open(p, "rb") as fh:  # newline count (for JSONL an upper bound: blank lines are skipped)
                n, last = 0, b"\n"
                for block in iter(lambda fh=fh: fh.read(1 << 24), b""):
                    n, last = n + block.count(b"\n"), block[-1:]
                total += n + (last != b"\n")
    return total


# -- one chunk -> one table ------------------------------------------------------------------------------
def clip(text: str | None) -> str:
    """Missing text reads as ''; text beyond what the backbone reads is cut (as `mtl predict` does)."""
    return "" if text is None else text[:MAX_CHARS]


def label_table(
    texts: list[str | None],
    sources: list[str],
    encode: Callable[[list[str]], np.ndarray],
    ckpt=None,
    with_embeddings: bool = False,
) -> "pa.Table":
    """The output rows of one chunk: labels + probabilities per task (`ckpt` given) and/or the vectors.

    Empty texts get null labels/vectors and `error = "empty text"`, as `mtl predict` reports them.
    """
    import pyarrow as pa

    from mtl.heads import predict_proba

    texts = [clip(t) for t in texts]
    ok = np.array([bool(t.strip()) for t in texts], dtype=bool)
    good = [t for t, k in zip(texts, ok) if k]
    x = encode(good) if good else np.zeros((0, 0), dtype=np.float32)
    cols: dict[str, pa.Array] = {"source": pa.array(sources, pa.string()), "text": pa.array(texts, pa.string())}
    if ckpt is not None:
        probs = predict_proba(ckpt.state, ckpt.tasks, x) if good else {}
        for task, labels in ckpt.tasks.items():
            full = np.zeros((len(texts), len(labels)), dtype=np.float32)
            if good:
                full[ok] = probs[task]
            best = full.argmax(1)
            cols[task] = pa.array([labels[b] if k else None for b, k in zip(best, ok)], pa.string())
            fields = [pa.array(full[:, j], pa.float32()) for j in range(len(labels))]
            cols[f"{task}_probs"] = pa.StructArray.from_arrays(fields, names=list(labels), mask=pa.array(~ok))
    if ckpt is None or with_embeddings:
        dim = x.shape[1] if good else _dim(ckpt)
        full = np.zeros((len(texts), dim), dtype=np.float32)
        if good:
            full[ok] = x
        cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), dim, mask=pa.array(~ok))
    cols["error"] = pa.array([None if k else "empty text" for k in ok], pa.string())
    return pa.table(cols)


def _dim(ckpt) -> int:
    return int(ckpt.meta.get("embedding_dim", 384)) if ckpt is not None else 384


# -- output shards ---------------------------------------------------------------------------------------
def to_jsonl(table: "pa.Table") -> str:
    """One JSON object per row, probabilities rounded like `mtl predict --format jsonl`."""
    lines = []
    for row in table.to_pylist():
        for k, v in row.items():
            if k.endswith("_probs") and v is not None:
                row[k] = {lab: round(p, 4) for lab, p in v.items()}
        if row.get("error") is None:
            row.pop("error", None)
        lines.append(json.dumps(row, ensure_ascii=False))
    return "\n".join(lines) + "\n"


def write_shard(path: Path, table: "pa.Table", fmt: str) -> None:
    """Write one shard atomically; a full disk or a read-only folder is a one-line error."""
    try:
        with atomic_path(path, suffix=".tmp") as tmp:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                pq.write_table(table, tmp)
            else:
                tmp.write_text(to_jsonl(table), encoding="utf-8")
    except OSError as exc:
        raise MTLError(f"{path.parent}: cannot write {path.name} ({_os_reason(exc)})") from None


def _os_reason(exc: OSError) -> str:
    """'No space left on device', also when pyarrow reports it as 'Error writing bytes ... [errno 28] ...'."""
    import re

    code = exc.errno or next((int(m) for m in re.findall(r"\[errno (\d+)\]", str(exc))), None)
    return os.strerror(code) if code else str(exc).splitlines()[0][:200]


def shard_rows(path: Path, fmt: str) -> int | None:
    """Rows in a finished shard, or None when it is unreadable."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(path).metadata.num_rows
        with open(path, "rb") as fh:
            return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 24), b""))
    except Exception:  # noqa: BLE001 (any failure to read the shard means: redo it)
        return None


# -- the run ------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """What a corpus run computes; its manifest must match for a rerun to resume."""

    command: str  # predict | embed
    inputs: list[str]
    out: Path
    fmt: str = "parquet"
    chunk_size: int = CHUNK_SIZE
    with_embeddings: bool = False
    model: str | None = None
    backbone: str | None = None
    layers: str | None = None
    backend: str | None = None

    def manifest(self) -> dict:
        from mtl.pipeline import file_digest

        files = [{"path": source_name(p), **({} if p == "-" else {"bytes": os.path.getsize(p), "mtime_ns": os.stat(p).st_mtime_ns})} for p in self.inputs]
        return {
            "command": self.command, "inputs": files, "format": self.fmt, "chunk_size": self.chunk_size,
            "with_embeddings": self.with_embeddings, "model": self.model and file_digest(self.model),
            "backbone": self.backbone, "layers": self.layers, "backend": self.backend,
        }


def open_out(job: Job) -> tuple[dict, bool]:
    """Check OUT against an earlier run; return (manifest, already complete)."""
    want = job.manifest()
    path = job.out / MANIFEST
    if path.is_file():
        try:
            have = json.loads(path.read_text())
        except ValueError:
            raise MTLError(f"{path}: unreadable manifest; delete {job.out} or choose another --out") from None
        diff = [k for k in want if have.get(k) != want[k]]
        if diff:
            raise MTLError(f"{job.out}: holds a different run (differs in {', '.join(diff)}); rerun with the same arguments to resume, or choose another --out")
        return have, bool(have.get("complete"))
    if job.out.is_dir() and any(p for p in job.out.iterdir() if not p.name.startswith(".")):
        raise MTLError(f"{job.out}: not empty and not an mtl output folder; choose an empty or new --out")
    write_text(path, json.dumps(want, indent=1))
    return want, False


def run(job: Job, encode: Callable[[list[str]], np.ndarray], ckpt=None, slice_rows: int = ENCODE_SLICE) -> dict:
    """Stream the corpus through `encode` (+ the heads), one shard per chunk, skipping finished shards.

    `slice_rows` texts go to `encode` at a time (ENCODE_SLICE_GPU when the encoder runs on a GPU)."""
    from filelock import FileLock, Timeout
    from tqdm import tqdm  # plain: tqdm.auto warns in kernels without ipywidgets

    if job.out.exists() and not job.out.is_dir():
        raise MTLError(f"{job.out}: is a file; --out takes a folder")
    job.out.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(job.out / ".lock"), timeout=0):  # one run per folder: the next step deletes temp files
            return _run(job, encode, ckpt, tqdm, slice_rows)
    except Timeout:
        raise MTLError(f"{job.out}: another mtl run is writing here; wait for it or choose another --out") from None


def _run(job: Job, encode: Callable[[list[str]], np.ndarray], ckpt, tqdm, slice_rows: int) -> dict:
    manifest, complete = open_out(job)
    if complete:
        print(f"{job.out}: already complete ({manifest.get('rows', '?')} rows); nothing to do", file=sys.stderr)
        return manifest
    for stale in job.out.glob(".part-*"):  # temp files of shards a killed run was writing
        stale.unlink(missing_ok=True)
    ext = "parquet" if job.fmt == "parquet" else "jsonl"
    # leave=False: the bar is wiped when the run ends, leaving the summary line (or the one-line error).
    bar = tqdm(total=count_rows(job.inputs), unit="rows", desc=job.command, file=sys.stderr, mininterval=1, smoothing=0.1, dynamic_ncols=True, leave=False)
    t0 = time.perf_counter()
    rows = kept = written = 0
    try:
        for i, (texts, sources) in enumerate(iter_chunks(job.inputs, job.chunk_size)):
            rows += len(texts)
            shard = job.out / f"part-{i:08d}.{ext}"
            if shard.is_file() and shard_rows(shard, job.fmt) == len(texts):
                kept += 1  # finished by an earlier run: its write was atomic, so it is whole
                bar.update(len(texts))
                continue
            counted = 0

            def sliced(batch: list[str]) -> np.ndarray:
                """`encode` in slices of `slice_rows` texts, so the bar moves within a chunk."""
                nonlocal counted
                parts = []
                for start in range(0, len(batch), slice_rows):
                    parts.append(encode(batch[start : start + slice_rows]))
                    bar.update(len(parts[-1]))
                    counted += len(parts[-1])
                return np.concatenate(parts)

            write_shard(shard, label_table(texts, sources, sliced, ckpt, job.with_embeddings), job.fmt)
            written += 1
            bar.update(len(texts) - counted)  # rows with empty text
    finally:
        bar.close()
    manifest.update(complete=True, rows=rows, shards=kept + written)
    write_text(job.out / MANIFEST, json.dumps(manifest, indent=1))
    resumed = f" ({kept} finished shards kept from an earlier run)" if kept else ""
    secs = time.perf_counter() - t0
    print(f"{job.out}: {rows} rows in {kept + written} shards{resumed}; {secs:.0f} s, {rows / max(secs, 1e-9):.0f} rows/s", file=sys.stderr)
    return manifest
