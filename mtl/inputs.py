"""Texts to label, from any input the CLI accepts: text files (one text per line), CSV / JSONL / Parquet with a
`text` column, `-` for stdin, several paths or globs. The one reader for `mtl predict` and `mtl embed`, small
or corpus-sized: texts come in file order, in batches, so memory holds one batch whatever the file size.

Every line of a text file is kept, empty ones too, so outputs line up with inputs; missing texts read as ''
and long ones are cut by `data.clip`, the one truncation rule.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from mtl.data import clip, empty_csv, existing_file, no_text, not_utf8, unreadable
from mtl.errors import MTLError

READ_BATCH = 8192  # texts per batch a reader yields


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
        else:
            existing_file(src, f"; pass its files or a glob such as '{src.rstrip('/')}/*.parquet'")
            out.append(src)
    return out


def _arrow_error(path: str, what: str, exc: Exception) -> MTLError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return MTLError(f"{path}: cannot read as {what} ({first[:200]})")


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
            raise no_text(path, schema.names)
        if not (pa.types.is_string(schema.field("text").type) or pa.types.is_large_string(schema.field("text").type)):
            raise MTLError(f"{path}: column 'text' holds {schema.field('text').type}, expected strings")
    elif k == "csv":
        import csv

        try:
            with open(path, encoding="utf-8-sig", newline="") as fh:
                header = next(csv.reader(fh), [])
        except UnicodeDecodeError as exc:
            raise not_utf8(path, 1, exc) from None
        except OSError as exc:
            raise unreadable(path, exc) from None
        if not header:
            raise empty_csv(path)
        if "text" not in [h.strip() for h in header]:
            raise no_text(path, header)


def _read_txt(path: str) -> Iterator[list[str]]:
    """Lines as `str.splitlines` cuts them (what Ray's read_text does too), read line by line."""
    fh = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115 (closed below unless stdin)
    name = "<stdin>" if path == "-" else path
    batch: list[str] = []
    try:
        for n, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise not_utf8(name, n, exc) from None
            batch += line.splitlines() or [""]
            if len(batch) >= READ_BATCH:
                yield batch
                batch = []
    except OSError as exc:
        raise unreadable(name, exc) from None
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


def read_texts(path: str) -> Iterator[list[str]]:
    """Batches of texts from one input, in file order (missing text as '', long text clipped)."""
    check_input(path)
    k = kind(path)
    batches = _read_arrow(path, k) if k in ("parquet", "csv") else _read_jsonl(path) if k == "jsonl" else _read_txt(path)
    line = 1 if k in ("txt", "jsonl") else 2  # CSV: the header is line 1 (Parquet: the row number + 1)
    name = "<stdin>" if path == "-" else path
    for batch in batches:
        yield clip(batch, name, line)
        line += len(batch)


def read_all(sources: list[str]) -> list[str]:
    """Every text of the given inputs (globs expanded), in order: for `mtl predict` without --out."""
    return [t for path in expand(sources) for batch in read_texts(path) for t in batch]


def source_name(path: str) -> str:
    return path if path == "-" else os.path.abspath(path)


def iter_chunks(paths: list[str], chunk_size: int) -> Iterator[tuple[list[str], list[str]]]:
    """(texts, sources) for consecutive chunks of exactly `chunk_size` rows (the last may be shorter)."""
    texts: list[str] = []
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


def count_lines(path: str | Path) -> int:
    """Lines in a file (a last line without its newline counts too), read in blocks: text inputs and JSONL shards."""
    with open(path, "rb") as fh:
        n, last = 0, b"\n"
        for block in iter(lambda: fh.read(1 << 24), b""):
            n, last = n + block.count(b"\n"), block[-1:]
    return n + (last != b"\n")


def count_rows(paths: list[str]) -> int | None:
    """Rows in the inputs when that is cheap (Parquet footers, line counts); None for CSV and stdin."""
    total = 0
    for p in paths:
        k = kind(p)
        if p == "-" or k == "csv":
            return None
        if k == "parquet":
            import pyarrow.parquet as pq

            total += pq.ParquetFile(p).metadata.num_rows
        else:
            total += count_lines(p)  # for JSONL an upper bound: blank lines are skipped
    return total
