"""`--engine ray`: the corpus run on Ray Data, for more machines than one.

Data flow: `ray.data.read_parquet/read_csv/read_json/read_text` → `map_batches(Labeller,
concurrency=N)` (each actor loads the encoder and the heads once) → `write_parquet`. The actors
call `mtl.corpus.label_table`, the function the local engine uses, so both engines write the same
rows in the same order (`preserve_order`). Ray is an optional extra (`pip install -e ".[scale]"`)
and imported only here. With `RAY_ADDRESS` set (e.g. under `ray job submit`) it joins that
cluster; otherwise `ray.init()` starts a local one.

The output is written to `OUT/.ray-<id>/` and moved into `OUT` only when Ray has finished, so an
interrupted Ray run leaves no partial shards (a rerun starts over; the embedding cache on each
node keeps the vectors already computed there).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

from mtl.atomic import write_text
from mtl.corpus import MANIFEST, Job, kind, label_table, open_out
from mtl.errors import MTLError


class Labeller:
    """One Ray actor: the encoder and the heads are loaded once, then every batch goes through them."""

    def __init__(self, ckpt_bytes: bytes | None, settings: dict):
        from mtl.backbone import DEFAULT_BACKBONE
        from mtl.checkpoint import load_checkpoint
        from mtl.embed import EmbedSpec

        self.settings = settings
        self.spec = EmbedSpec(backend=settings["backend"] or "auto", device=settings["device"], cache_dir=settings["cache_dir"],
                              layers=settings["layers"] or "last", backbone=settings["backbone"] or DEFAULT_BACKBONE)
        self.ckpt = None
        if ckpt_bytes is not None:
            # Workers may not see the driver's files: the checkpoint travels as bytes (safetensors, no pickle).
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.safetensors"
                path.write_bytes(ckpt_bytes)
                self.ckpt = load_checkpoint(path)

    def encode(self, texts: list[str]):
        from mtl.embed import encode

        if self.ckpt is not None:
            from mtl.pipeline import embed_for

            return embed_for(self.ckpt, "<checkpoint>", texts, self.spec)[0]
        return encode(texts, self.spec)[0]

    def __call__(self, batch):
        texts = batch.column("text").to_pylist()
        sources = [os.path.abspath(p) for p in batch.column("path").to_pylist()]
        return label_table(texts, sources, self.encode, self.ckpt, self.settings["with_embeddings"])


def _read(ray, inputs: list[str]):
    """One Ray dataset over every input, in order (consecutive files of one format share a reader)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    groups: list[tuple[str, list[str]]] = []
    for path in inputs:
        k = kind(path)
        if groups and groups[-1][0] == k:
            groups[-1][1].append(path)
        else:
            groups.append((k, [path]))
    common = {"include_paths": True, "file_extensions": None}
    parts = []
    for k, paths in groups:
        if k == "parquet":
            parts.append(ray.data.read_parquet(paths, columns=["text"], **common))
        elif k == "csv":
            parts.append(ray.data.read_csv(
                paths, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(include_columns=["text"], column_types={"text": pa.string()}), **common,
            ))
        elif k == "jsonl":
            parts.append(ray.data.read_json(paths, lines=True, **common).select_columns(["text", "path"]))
        else:
            parts.append(ray.data.read_text(paths, drop_empty_lines=False, **common))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _root_cause(exc: Exception) -> str:
    """The innermost `SomeError: message` line of a Ray traceback (Ray wraps it in several layers)."""
    import re

    causes = re.findall(r"^(?:\S+\.)?(\w*(?:Error|Exception)): (.+)$", str(exc), re.M)
    name, msg = causes[-1] if causes else (type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "")
    return (msg if name == "MTLError" else f"{name}: {msg}")[:300]


def _names():
    from ray.data.datasource import FilenameProvider

    class Names(FilenameProvider):
        """part-<task>-<write id>.parquet (Ray insists on the write id); with `preserve_order`, task order is row order."""

        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{task_index:08d}-{write_uuid}.parquet"

    return Names()


def _init(ray, workers: int) -> None:
    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init()  # an existing cluster (e.g. under `ray job submit`)
        return
    # Local: the encoder actors take one logical CPU each; one more lets Ray's read and write tasks run
    # beside them (otherwise 2 actors on a 2-core machine would leave the reader waiting forever).
    for attempt in (1, 2):  # on a busy machine the local node's start-up can time out once
        try:
            ray.init(num_cpus=max(os.cpu_count() or 1, workers + 1), include_dashboard=False, log_to_driver=False)
            return
        except Exception as exc:  # noqa: BLE001 (Ray raises a bare Exception for a start-up timeout)
            ray.shutdown()
            if attempt == 2:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise MTLError(f"--engine ray: could not start a local Ray instance ({first[:200]})") from None


def run_ray(job: Job, device: str = "auto", cache_dir: str | None = None, workers: int = 1) -> dict:
    """Run `job` on Ray Data and leave the same shards + manifest the local engine would."""
    try:
        import ray
    except ImportError:
        raise MTLError("--engine ray: Ray is not installed; pip install -e '.[scale]' (or pip install 'ray[data]')") from None
    if job.out.exists() and not job.out.is_dir():
        raise MTLError(f"{job.out}: is a file; --out takes a folder")
    manifest, complete = open_out(job)
    if complete:
        print(f"{job.out}: already complete ({manifest.get('rows', '?')} rows); nothing to do", file=sys.stderr)
        return manifest
    for old in job.out.glob("part-*"):  # a Ray run is all or nothing: shards of an unfinished run are redone
        old.unlink()
    settings = {
        "backend": job.backend, "device": device, "cache_dir": cache_dir, "with_embeddings": job.with_embeddings,
        "backbone": job.backbone, "layers": job.layers,
    }
    ckpt_bytes = Path(job.model).read_bytes() if job.model else None
    gpu = device == "cuda"
    _init(ray, workers)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # output rows in input order, as the local engine writes them
    staging = job.out / f".ray-{uuid.uuid4().hex[:8]}"
    try:
        # Blocks of at most chunk_size rows (streaming, order kept), so that N actors have N blocks to share.
        ds = _read(ray, job.inputs).repartition(target_num_rows_per_block=job.chunk_size).map_batches(
            Labeller, fn_constructor_args=(ckpt_bytes, settings), batch_size=job.chunk_size, batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=1, num_gpus=1 if gpu else 0,
        )
        ds.write_parquet(str(staging), filename_provider=_names())
    except ray.exceptions.RayError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise MTLError(f"Ray run failed: {_root_cause(exc)}") from None
    rows = shards = 0
    import pyarrow.parquet as pq

    for part in sorted(staging.glob("part-*.parquet")):
        rows += pq.ParquetFile(part).metadata.num_rows
        shards += 1
        os.replace(part, job.out / f"{part.name[:13]}.parquet")  # part-<task>, as the local engine names shards
    shutil.rmtree(staging, ignore_errors=True)
    manifest.update(complete=True, rows=rows, shards=shards, engine="ray", workers=workers)
    write_text(job.out / MANIFEST, json.dumps(manifest, indent=1))
    print(f"{job.out}: {rows} rows in {shards} shards (Ray, {workers} worker{'s' * (workers > 1)})", file=sys.stderr)
    return manifest
