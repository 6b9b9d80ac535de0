"""Corpus-scale `predict` and `embed`: stream the input in fixed-size chunks, write one output shard per chunk.

Rows are read in order (`mtl.inputs`) and cut into chunks of `chunk_size`; chunk i becomes
`OUT/part-<i>.parquet` (or `.jsonl`), written atomically. `OUT/_manifest.json` records the inputs and
settings, so a rerun after a crash or Ctrl-C checks it is the same job and redoes only the chunks without a
shard. Memory holds a few chunks at a time, whatever the corpus size.

Who labels a chunk is the engine: this process (`local`), or actors on a Ray cluster (`mtl.corpus.ray_engine`).
Either way the chunk goes through `mtl.predict.label`, and this module alone reads the input, skips finished
shards and writes them, so both engines resume alike and write the same rows.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mtl.atomic import atomic_path, write_text
from mtl.errors import MTLError
from mtl.inputs import count_lines, count_rows, iter_chunks, source_name
from mtl.predict import Predictions, to_jsonl

CHUNK_SIZE = 10_000  # rows per output shard: ~15 MB of vectors, ~1 min of encoding on 2 CPU cores
MANIFEST = "_manifest.json"  # leading "_" / ".": pyarrow and Ray skip these when reading OUT as a dataset

# An engine maps chunks (index, texts, sources) to (index, Predictions), in any order; `progress(n)` counts texts.
Engine = Callable[[Iterator[tuple[int, list[str], list[str]]], Callable[[int], None]], Iterator[tuple[int, Predictions]]]


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

    @property
    def embeddings(self) -> bool:
        """Whether shards carry vectors: always for `embed`, on request for `predict`."""
        return self.with_embeddings or self.command == "embed"

    def manifest(self) -> dict:
        from mtl.data import file_digest

        files = [{"path": source_name(p), **({} if p == "-" else {"bytes": os.path.getsize(p), "mtime_ns": os.stat(p).st_mtime_ns})} for p in self.inputs]
        return {
            "command": self.command, "inputs": files, "format": self.fmt, "chunk_size": self.chunk_size,
            "with_embeddings": self.with_embeddings, "model": self.model and file_digest(self.model),
            "backbone": self.backbone, "layers": self.layers, "backend": self.backend,
        }


def write_shard(path: Path, pred: Predictions, sources: list[str], job: Job) -> None:
    """Write one shard atomically; a full disk or a read-only folder is a one-line error."""
    try:
        with atomic_path(path, suffix=".tmp") as tmp:
            if job.fmt == "parquet":
                import pyarrow.parquet as pq

                pq.write_table(pred.table(sources, job.embeddings), tmp)
            else:
                tmp.write_text(to_jsonl(pred.rows(sources, job.embeddings)), encoding="utf-8")
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
        return count_lines(path)
    except Exception:  # noqa: BLE001 (any failure to read the shard means: redo it)
        return None


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
    write_text(path, json.dumps(want, indent=1))
    return want, False


def local_engine(encode: Callable[..., object], ckpt=None) -> Engine:
    """Label chunks in this process: `encode(texts, progress=...)` gives vectors, `ckpt` (predict) its heads."""
    from mtl.predict import label

    def run(chunks, progress):
        for i, texts, _ in chunks:
            yield i, label(texts, lambda good: encode(good, progress=progress), ckpt)
            progress(sum(not t.strip() for t in texts))  # empty texts are rows too

    return run


def run(job: Job, engine: Engine, name: str = "local engine") -> dict:
    """Stream the corpus through `engine`, one shard per chunk, skipping chunks whose shard is already whole."""
    from filelock import FileLock, Timeout

    if job.out.exists() and not job.out.is_dir():
        raise MTLError(f"{job.out}: is a file; --out takes a folder")
    if job.out.is_dir() and not (job.out / MANIFEST).is_file() and any(not p.name.startswith(".") for p in job.out.iterdir()):
        raise MTLError(f"{job.out}: not empty and not an mtl output folder; choose an empty or new --out")  # before writing anything there
    job.out.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(str(job.out / ".lock"), timeout=0):  # one run per folder: the next step deletes temp files
            return _run(job, engine, name)
    except Timeout:
        raise MTLError(f"{job.out}: another mtl run is writing here; wait for it or choose another --out") from None


def _run(job: Job, engine: Engine, name: str) -> dict:
    from mtl.progress import bar as progress_bar

    manifest, complete = open_out(job)
    if complete:
        print(f"{job.out}: already complete ({manifest.get('rows', '?')} rows); nothing to do", file=sys.stderr)
        return manifest
    for stale in job.out.glob(".part-*"):  # temp files of shards a killed run was writing
        stale.unlink(missing_ok=True)
    ext = "parquet" if job.fmt == "parquet" else "jsonl"
    # leave=False: the bar is wiped when the run ends, leaving the summary line (or the one-line error).
    bar = progress_bar(count_rows(job.inputs), job.command, "rows", mininterval=1, smoothing=0.1, dynamic_ncols=True, leave=False)
    t0 = time.perf_counter()
    counts = {"rows": 0, "kept": 0, "kept_rows": 0, "written": 0}
    sources_of: dict[int, list[str]] = {}

    def todo() -> Iterator[tuple[int, list[str], list[str]]]:
        for i, (texts, sources) in enumerate(iter_chunks(job.inputs, job.chunk_size)):
            counts["rows"] += len(texts)
            shard = job.out / f"part-{i:08d}.{ext}"
            if shard.is_file() and shard_rows(shard, job.fmt) == len(texts):
                counts["kept"] += 1  # finished by an earlier run: its write was atomic, so it is whole
                counts["kept_rows"] += len(texts)
                bar.update(len(texts))
                continue
            sources_of[i] = sources
            yield i, texts, sources

    from concurrent.futures import ThreadPoolExecutor

    pending = None  # the previous shard's write, running while the engine labels the next chunk
    try:
        with ThreadPoolExecutor(max_workers=1) as writer:
            for i, pred in engine(todo(), bar.update):
                if pending is not None:
                    pending.result()  # one write in flight: a failed write stops the run before the next is started
                    counts["written"] += 1
                pending = writer.submit(write_shard, job.out / f"part-{i:08d}.{ext}", pred, sources_of.pop(i), job)
            if pending is not None:
                pending.result()
                counts["written"] += 1
    finally:
        bar.close()
    rows, kept, done = counts["rows"], counts["kept"], counts["rows"] - counts["kept_rows"]
    manifest.update(complete=True, rows=rows, shards=kept + counts["written"], engine=name)
    write_text(job.out / MANIFEST, json.dumps(manifest, indent=1))
    resumed = f" ({kept} finished shards kept from an earlier run)" if kept else ""
    secs = time.perf_counter() - t0
    print(f"{job.out}: {rows} rows in {kept + counts['written']} shards{resumed}; {secs:.0f} s, {done / max(secs, 1e-9):.0f} rows/s labelled ({name})",
          file=sys.stderr)
    return manifest
