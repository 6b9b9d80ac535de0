"""On-disk embedding store, keyed by backbone identity + backend mode + SHA-256 of each text.

Layout: `<cache_dir>/embeddings/<identity>/<mode>/shard-*.npz`, each shard holding
`keys` (n x 32 bytes) and `emb` (n x dim float32). Every write is a new shard
written atomically, so concurrent writers never clobber each other and a killed
run leaves only whole shards. Corrupt shards (bad zip CRC, wrong shapes) are
reported once, set aside and their texts re-encoded. Many small shards are
merged under a file lock.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
import zipfile
from pathlib import Path

import numpy as np

from mtl.atomic import atomic_path

MERGE_AT = 16


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    def __init__(self, cache_dir: Path, identity: str, mode: str):
        self.dir = Path(cache_dir) / "embeddings" / identity / mode
        self._memo: dict[bytes, np.ndarray] | None = None

    def _shards(self) -> list[Path]:
        return sorted(self.dir.glob("shard-*.npz")) if self.dir.is_dir() else []

    def _read(self, shard: Path) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            with np.load(shard, allow_pickle=False) as z:
                keys, emb = z["keys"], z["emb"]
            if keys.ndim != 2 or keys.shape[1] != 32 or emb.ndim != 2 or len(keys) != len(emb):
                raise ValueError("inconsistent shapes")
            if not np.isfinite(emb).all():
                raise ValueError("non-finite values")
            return keys, emb
        except FileNotFoundError:
            return None  # merged away by another process meanwhile
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
            warnings.warn(f"embedding cache: {shard.name} is corrupt ({exc}); set aside, its texts will be re-encoded", stacklevel=2)
            try:
                os.replace(shard, shard.with_suffix(".corrupt"))
            except OSError:
                pass
            return None

    def load(self) -> dict[bytes, np.ndarray]:
        """All cached vectors, by key (read once per instance)."""
        if self._memo is None:
            memo: dict[bytes, np.ndarray] = {}
            for shard in self._shards():
                got = self._read(shard)
                if got is not None:
                    memo.update(zip(map(bytes, got[0]), got[1]))
            self._memo = memo
        return self._memo

    def get_many(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        """The cached vectors among `keys`."""
        stored = self.load()
        return {k: stored[k] for k in keys if k in stored}

    def put(self, keys: list[bytes], emb: np.ndarray) -> None:
        """Store new vectors as one shard."""
        if not keys:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        target = self.dir / f"shard-{uuid.uuid4().hex}.npz"
        with atomic_path(target, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, 32), emb=emb.astype(np.float32))
        self.load().update(zip(keys, emb.astype(np.float32)))
        if len(self._shards()) >= MERGE_AT:
            self.merge()

    def merge(self) -> None:
        """Fold all shards into one (under a lock, so two mergers don't race)."""
        from filelock import FileLock, Timeout

        try:
            with FileLock(str(self.dir / ".merge.lock"), timeout=0):
                shards = self._shards()
                parts = [p for p in (self._read(s) for s in shards) if p is not None]
                if len(shards) < 2 or not parts:
                    return
                keys = np.concatenate([p[0] for p in parts])
                emb = np.concatenate([p[1] for p in parts])
                _, first = np.unique(keys, axis=0, return_index=True)
                target = self.dir / f"shard-{uuid.uuid4().hex}.npz"
                with atomic_path(target, suffix=".npz") as tmp:
                    with open(tmp, "wb") as fh:
                        np.savez(fh, keys=keys[first], emb=emb[first])
                for s in shards:
                    s.unlink(missing_ok=True)
        except Timeout:
            return  # another process is merging; its result serves us too
