"""On-disk embedding store, keyed by backbone identity + backend mode + SHA-256 of each text.

Layout: `<cache_dir>/embeddings/<identity>/<mode>/cache.sqlite`, one SQLite database per folder,
table `emb(key BLOB UNIQUE, vec BLOB, crc INTEGER, used INTEGER)`: `key` is the 32-byte text
hash, `vec` the float32 vector, `crc` a CRC-32 of key+vec, `used` the day it was last read.

Why SQLite: a lookup is an index probe, so asking for 1 key costs the same with 10 or 10 M
entries (the old `.npz` shards had to be read whole). WAL mode lets many readers run beside one
writer; writers queue on SQLite's lock (busy timeout), and each `put` is one transaction, so a
killed run leaves only whole rows. A damaged file (not a database, malformed pages) is reported,
set aside as `cache.sqlite.corrupt-*` and rebuilt; a row whose CRC or length is wrong is dropped
and its text re-encoded. Old `shard-*.npz` caches are imported once. `mtl cache info|prune`
reports and bounds the store (least recently used entries go first).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

DB_NAME = "cache.sqlite"
BUSY_TIMEOUT_S = 120  # a writer waits this long for another writer's transaction
IN_BATCH = 500  # keys per `IN (...)` query, under SQLite's bound-parameter limit
DAY = 86400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS emb (key BLOB NOT NULL UNIQUE, vec BLOB NOT NULL, crc INTEGER NOT NULL, used INTEGER NOT NULL)
"""


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _crc(key: bytes, vec: bytes) -> int:
    return zlib.crc32(vec, zlib.crc32(key))


def _today() -> int:
    return int(time.time()) // DAY


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """Damaged file (vs. locked, read-only, disk full: those are OperationalErrors and not the file's fault)."""
    name = getattr(exc, "sqlite_errorname", "")
    if name:
        return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
    return type(exc) is sqlite3.DatabaseError


class EmbeddingCache:
    def __init__(self, cache_dir: Path, identity: str, mode: str):
        self.dir = Path(cache_dir) / "embeddings" / identity / mode
        self.path = self.dir / DB_NAME
        self._write_warned = False

    # -- connection -------------------------------------------------------------------------
    @contextmanager
    def _db(self, create: bool = False) -> Iterator[sqlite3.Connection | None]:
        """A short-lived connection (no handle is kept, so forked or Ray workers never share one)."""
        if not create and not self.path.exists():
            yield None
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            if create:
                con.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only takes effect on a new file: lets prune shrink it
                con.execute("PRAGMA journal_mode=WAL")
                con.execute(_SCHEMA)
            con.execute("PRAGMA synchronous=NORMAL")  # with WAL: a crash loses at most the last commits, never consistency
            yield con
        finally:
            con.close()

    def _guard(self, fn, default):
        """Run `fn()`. A damaged file is set aside and `fn` retried on a fresh one; a cache that
        cannot be used (locked for minutes, read-only, disk full) warns once and yields `default`."""
        for retry in (False, True):
            try:
                return fn()
            except sqlite3.DatabaseError as exc:
                err = exc
            if retry or not _is_corruption(err):
                break
            self._set_aside(err)
        if not isinstance(err, sqlite3.OperationalError):
            raise err
        if not self._write_warned:
            self._write_warned = True
            warnings.warn(f"embedding cache: {self.path}: {err}; continuing without it", stacklevel=3)
        return default

    def _set_aside(self, exc: Exception) -> None:
        warnings.warn(f"embedding cache: {self.path} is corrupt ({exc}); set aside, its texts will be re-encoded", stacklevel=4)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        try:
            os.replace(self.path, self.path.with_name(f"{DB_NAME}.corrupt-{stamp}-{os.getpid()}"))
        except FileNotFoundError:
            pass  # another process set it aside first
        for side in ("-wal", "-shm"):
            self.path.with_name(DB_NAME + side).unlink(missing_ok=True)

    # -- reading ------------------------------------------------------------------------------
    def get_many(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        """Cached vectors for those of `keys` that are stored and intact: O(len(keys)), not O(cache)."""
        self._import_shards()
        return self._guard(lambda: self._get_many(keys), {})

    def _get_many(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        out: dict[bytes, np.ndarray] = {}
        bad: list[bytes] = []
        stale: list[bytes] = []
        today, dim = _today(), None
        with self._db() as con:
            if con is None:
                return out
            uniq = list(dict.fromkeys(keys))
            for start in range(0, len(uniq), IN_BATCH):
                part = uniq[start : start + IN_BATCH]
                rows = con.execute(f"SELECT key, vec, crc, used FROM emb WHERE key IN ({','.join('?' * len(part))})", part)
                for key, vec, crc, used in rows:
                    if _crc(key, vec) != crc or len(vec) % 4 or (dim is not None and len(vec) != dim):
                        bad.append(key)
                        continue
                    v = np.frombuffer(vec, dtype=np.float32)
                    if not np.isfinite(v).all():
                        bad.append(key)
                        continue
                    dim, out[key] = len(vec), v
                    if used < today:
                        stale.append(key)
            if bad:
                warnings.warn(f"embedding cache: {self.path}: {len(bad)} corrupt entries dropped; their texts will be re-encoded", stacklevel=3)
            self._write(con, "DELETE FROM emb WHERE key = ?", [(k,) for k in bad])
            # Recency for `prune`, at day resolution so a warm cache is read without writing.
            self._write(con, "UPDATE emb SET used = ? WHERE key = ?", [(today, k) for k in stale])
        return out

    def _write(self, con: sqlite3.Connection, sql: str, rows: list[tuple]) -> None:
        """Best-effort write (a read-only cache still serves lookups)."""
        if not rows:
            return
        try:
            with con:
                con.execute("BEGIN IMMEDIATE")
                con.executemany(sql, rows)
        except sqlite3.OperationalError:
            pass

    # -- writing ------------------------------------------------------------------------------
    def put(self, keys: list[bytes], emb: np.ndarray) -> None:
        """Store vectors in one transaction (all rows or none)."""
        if not keys:
            return
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        today = _today()
        rows = []
        for k, v in zip(keys, emb):
            blob = v.tobytes()
            rows.append((k, blob, _crc(k, blob), today))

        def write() -> None:
            with self._db(create=True) as con:
                with con:
                    con.execute("BEGIN IMMEDIATE")
                    con.executemany("INSERT OR REPLACE INTO emb (key, vec, crc, used) VALUES (?, ?, ?, ?)", rows)

        self._guard(write, None)

    # -- maintenance ------------------------------------------------------------------------------
    def info(self) -> dict:
        """Entry count, bytes on disk and the range of last-use days."""
        def read() -> dict:
            with self._db() as con:
                if con is None:
                    return {"entries": 0}
                n, lo, hi = con.execute("SELECT count(*), min(used), max(used) FROM emb").fetchone()
                return {"entries": n, "oldest_use": _day_str(lo), "newest_use": _day_str(hi)}

        out = {"path": str(self.path), **self._guard(read, {"entries": 0})}
        out["bytes"] = sum(p.stat().st_size for p in self.dir.glob(f"{DB_NAME}*") if p.is_file() and "corrupt" not in p.name) if self.dir.is_dir() else 0
        out["set_aside"] = len(list(self.dir.glob("*.corrupt*"))) if self.dir.is_dir() else 0
        return out

    def prune(self, max_entries: int | None = None, older_than_days: int | None = None) -> int:
        """Drop entries unused for `older_than_days`, then the least recently used beyond `max_entries`; return how many."""
        def run() -> int:
            with self._db() as con:
                if con is None:
                    return 0
                gone = 0
                with con:
                    con.execute("BEGIN IMMEDIATE")
                    if older_than_days is not None:
                        gone += con.execute("DELETE FROM emb WHERE used < ?", (_today() - older_than_days,)).rowcount
                    if max_entries is not None:
                        extra = con.execute("SELECT count(*) FROM emb").fetchone()[0] - max_entries
                        if extra > 0:
                            gone += con.execute("DELETE FROM emb WHERE rowid IN (SELECT rowid FROM emb ORDER BY used, rowid LIMIT ?)", (extra,)).rowcount
                con.execute("PRAGMA incremental_vacuum")  # hand the freed pages back to the file system
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                return gone

        return self._guard(run, 0)

    def _import_shards(self) -> None:
        """Fold a pre-SQLite cache (`shard-*.npz`) into the database once, then delete the shards."""
        if not self.dir.is_dir():
            return
        for shard in sorted(self.dir.glob("shard-*.npz")):
            try:
                with np.load(shard, allow_pickle=False) as z:
                    keys, emb = z["keys"], z["emb"]
                if keys.ndim != 2 or keys.shape[1] != 32 or emb.ndim != 2 or len(keys) != len(emb) or not np.isfinite(emb).all():
                    raise ValueError("inconsistent shapes or values")
            except FileNotFoundError:
                continue  # imported by another process meanwhile
            except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
                warnings.warn(f"embedding cache: {shard.name} is corrupt ({exc}); set aside, its texts will be re-encoded", stacklevel=3)
                try:
                    os.replace(shard, shard.with_suffix(".corrupt"))
                except OSError:
                    pass
                continue
            self.put([bytes(k) for k in keys], emb)
            shard.unlink(missing_ok=True)


def _day_str(day: int | None) -> str | None:
    return None if day is None else time.strftime("%Y-%m-%d", time.gmtime(day * DAY))


def folders(cache_dir: Path) -> list[tuple[str, str]]:
    """(identity, mode) of every cache folder under `cache_dir`."""
    root = Path(cache_dir) / "embeddings"
    if not root.is_dir():
        return []
    return sorted((d.parent.name, d.name) for d in root.glob("*/*") if d.is_dir())
