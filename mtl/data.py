"""Labelled data: reading and validating CSVs (`load_dataset`), label ids, and embedding them (`load_encoded`).

Row numbers in messages are file line numbers (the header is line 1), so a user can jump straight to the
offending line in an editor. `clip` is the one truncation rule for every text the project reads
(labelled rows here, texts to label in `mtl.inputs`).
"""

from __future__ import annotations

import csv
import io
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mtl.errors import MTLError
from mtl.tasks import DEFAULT_TASKS, Tasks

if TYPE_CHECKING:
    import pandas as pd

    from mtl.engine.embed import EmbedSpec

# The backbone reads at most 256 word pieces; longer text is cut before tokenising
# so that a pathological 10 MB line costs milliseconds instead of minutes.
MAX_CHARS = 5000
SPLITS = ("train", "test")


# -- what goes wrong opening a file: the one wording for every reader (labelled CSVs here, texts to label in `inputs`)
def existing_file(path: str | Path, hint: str = "", what: str = "file", missing: str = "") -> Path:
    """`path`, or the one-line error for a missing file or a directory (`hint`: what to pass instead of a directory,
    `missing`: how to get the file)."""
    path = Path(path)
    if not path.exists():
        raise MTLError(f"{path}: {what} not found{missing}")
    if path.is_dir():
        raise MTLError(f"{path}: is a directory, expected a {what}{hint}")
    return path


def unreadable(path: str | Path, exc: OSError) -> MTLError:
    return MTLError(f"{path}: cannot read ({exc.strerror or exc})")


def not_utf8(path: str | Path, line: int, exc: UnicodeDecodeError) -> MTLError:
    return MTLError(f"{path}: line {line} is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x}); save the file as UTF-8")


def empty_csv(path: str | Path) -> MTLError:
    return MTLError(f"{path}: file is empty, expected a CSV with a header and rows")


def no_text(path: str | Path, columns: list[str]) -> MTLError:
    return MTLError(f"{path}: no 'text' column (columns are: {', '.join(columns) or 'none'})")


def _read_text(path: Path) -> str:
    try:
        raw = sys.stdin.buffer.read() if str(path) == "-" else existing_file(path).read_bytes()
    except OSError as exc:
        raise unreadable(path, exc) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise not_utf8(path, raw[: exc.start].count(b"\n") + 1, exc) from None


def clip(texts: list[str | None], where: str, first_line: int = 1) -> list[str]:
    """Missing text reads as ''; text beyond what the backbone reads is cut, with one warning per call
    (`where`: the file; `first_line`: the line of texts[0], so the warning names the first long one)."""
    out = ["" if t is None else t for t in texts]
    long = [i for i, t in enumerate(out) if len(t) > MAX_CHARS]
    if long:
        warnings.warn(f"{where}: {len(long)} text(s) longer than {MAX_CHARS:,} characters truncated (first at line "
                      f"{first_line + long[0]}); the backbone reads {MAX_CHARS:,} at most", stacklevel=2)
        for i in long:
            out[i] = out[i][:MAX_CHARS]
    return out


def normalise(text: str) -> str:
    """Fold case, punctuation and whitespace: two texts equal after this are duplicates."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def read_table(path: str | Path) -> "pd.DataFrame":
    """Read a CSV as strings; only empty cells are missing ("NaN" stays text)."""
    import pandas as pd

    path = Path(path)
    text = _read_text(path)
    if not text.strip():
        raise empty_csv(path)
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, csv.Error) as exc:
        raise MTLError(f"{path}: not a valid CSV ({str(exc).strip().splitlines()[-1]})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if df.empty:
        raise MTLError(f"{path}: has a header but no rows")
    return df


def load_dataset(path: str | Path, tasks: Tasks = DEFAULT_TASKS, warn_duplicates: bool = True) -> "pd.DataFrame":
    """Load a labelled CSV: a `text` column, one column per task present, optional `domain` and `split`.

    Empty label cells mean "no label for this task" (masked in loss and metrics). `domain` (free text,
    e.g. "markets") groups rows for leave-one-domain-out CV; it is never a feature.
    Returns a frame with `text`, `line`, the task columns found and `domain` / `split` if present.
    `warn_duplicates=False` for sets that are only scored (a repeated text matters where a model trains).
    """
    df = read_table(path)
    path = Path(path)
    if "text" not in df.columns:
        raise no_text(path, list(df.columns))
    df["line"] = np.arange(len(df)) + 2
    missing = df["text"].isna() | (df["text"].fillna("").str.strip() == "")
    if missing.any():
        raise MTLError(f"{path}: line {int(df.loc[missing, 'line'].iloc[0])}: empty text, expected a sentence")
    df["text"] = clip(list(df["text"]), str(path), first_line=2)
    present = [t for t in tasks if t in df.columns]
    if not present:
        raise MTLError(f"{path}: no label column for any task; expected one of: {', '.join(tasks)}")
    for task in present:
        values = df[task].str.strip()
        bad = values.notna() & ~values.isin(tasks[task])
        if bad.any():
            row = df.loc[bad].iloc[0]
            raise MTLError(
                f"{path}: line {int(row['line'])}: unknown {task} label {row[task]!r}; "
                f"expected one of {', '.join(tasks[task])} or empty"
            )
        df[task] = values
    if "split" in df.columns:
        split = df["split"].fillna("").str.strip()
        bad = ~split.isin(SPLITS)
        if bad.any():
            row = df.loc[bad].iloc[0]
            raise MTLError(f"{path}: line {int(row['line'])}: split {row['split']!r}, expected train or test")
        df["split"] = split
        _check_leakage(df, path)
    if "domain" in df.columns:
        df["domain"] = df["domain"].fillna("").str.strip()
    if warn_duplicates:
        _warn_duplicates(df, path)
    extra = [c for c in ("domain", "split") if c in df.columns]
    return df[["text", "line", *present, *extra]].reset_index(drop=True)


def _check_leakage(df: "pd.DataFrame", path: Path) -> None:
    key = df["text"].map(normalise)
    train, test = set(key[df["split"] == "train"]), key[df["split"] == "test"]
    leaked = test.isin(train)
    if leaked.any():
        row = df.loc[leaked[leaked].index[0]]
        raise MTLError(
            f"{path}: line {int(row['line'])}: test text also appears in the train split "
            f"({int(leaked.sum())} such rows); held-out scores would be inflated"
        )


_WARNED_DUPLICATES: set[tuple[str, int]] = set()  # once per file and count per process: a notebook may read a file often


def _warn_duplicates(df: "pd.DataFrame", path: Path) -> None:
    dup = df["text"].map(normalise).duplicated()
    if dup.any() and (str(path), int(dup.sum())) not in _WARNED_DUPLICATES:
        _WARNED_DUPLICATES.add((str(path), int(dup.sum())))
        warnings.warn(f"{path}: {int(dup.sum())} duplicate texts (first at line {int(df.loc[dup, 'line'].iloc[0])})", stacklevel=2)


NO_LABEL = "(none)"  # how tables and figures show an empty label cell


def labels_shown(df: "pd.DataFrame", tasks: Tasks = DEFAULT_TASKS) -> "pd.DataFrame":
    """A copy with empty label cells shown as NO_LABEL (e.g. the sentiment-only rows' topic), for tables and plots."""
    return df.fillna({task: NO_LABEL for task in tasks if task in df.columns})


def label_ids(df: "pd.DataFrame", tasks: Tasks) -> dict[str, np.ndarray]:
    """Label indices per task; -1 where the row has no label (or the column is absent)."""
    out = {}
    for task, labels in tasks.items():
        if task not in df.columns:
            out[task] = np.full(len(df), -1, dtype=np.int64)
            continue
        index = {lab: i for i, lab in enumerate(labels)}
        out[task] = np.array([index.get(v, -1) if isinstance(v, str) else -1 for v in df[task]], dtype=np.int64)
    return out


def file_digest(path: str | Path) -> str:
    """Short content hash of a file, recorded with what was trained on it."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@dataclass
class Encoded:
    """A labelled table with its embeddings and label ids (-1 = no label)."""

    frame: "pd.DataFrame"  # text, line, task columns, domain, split, source
    x: np.ndarray
    y: dict[str, np.ndarray]

    def rows(self, mask: np.ndarray) -> "Encoded":
        return Encoded(self.frame[mask].reset_index(drop=True), self.x[mask], {t: v[mask] for t, v in self.y.items()})

    def split(self) -> tuple["Encoded", "Encoded"]:
        """(train rows, held-out `split=test` rows)."""
        is_train = (self.frame["split"] == "train").to_numpy()
        return self.rows(is_train), self.rows(~is_train)

    @property
    def sources(self) -> np.ndarray:
        """Each row's source file name (what `TrainConfig.mix` weighs)."""
        return self.frame["source"].to_numpy()

    @staticmethod
    def concat(parts: list["Encoded"]) -> "Encoded":
        import pandas as pd

        return Encoded(pd.concat([p.frame for p in parts], ignore_index=True), np.concatenate([p.x for p in parts]),
                       {t: np.concatenate([p.y[t] for p in parts]) for t in parts[0].y})


def load_encoded(data: list[str | Path], tasks: Tasks = DEFAULT_TASKS, spec: "EmbedSpec | None" = None, verbose: bool = True,
                 warn_duplicates: bool = True, sample: int | None = None, seed: int = 0):
    """Load, validate and embed one or more CSVs (files may carry different task columns).

    Returns (Encoded, EncodeStats); files without a `split` column count as train rows, a file without
    `domain` is one domain (for leave-one-domain-out CV), and `source` is the file name. `sample` keeps that
    many train rows (drawn with `seed`; test rows all stay), chosen before encoding: a quick run embeds only them.
    """
    import pandas as pd

    from mtl.engine.embed import encode

    frames = []
    for path in data:
        df = load_dataset(path, tasks, warn_duplicates)
        df["source"] = Path(path).name
        if "split" not in df.columns:
            df["split"] = "train"
        if "domain" not in df.columns:
            df["domain"] = Path(path).stem
        frames.append(df)
    frame = pd.concat(frames, ignore_index=True)
    if sample is not None:
        train = np.flatnonzero(frame["split"].to_numpy() == "train")
        frame = frame.drop(index=np.random.default_rng(seed).permutation(train)[sample:]).reset_index(drop=True)
    x, stats = encode(list(frame["text"]), spec, verbose=verbose)
    return Encoded(frame, x, label_ids(frame, tasks)), stats
