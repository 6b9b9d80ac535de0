"""Reading and validating labelled CSVs and prediction inputs.

Row numbers in messages are file line numbers (the header is line 1), so a
user can jump straight to the offending line in an editor.
"""

from __future__ import annotations

import csv
import io
import re
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mtl.errors import MTLError
from mtl.tasks import DEFAULT_TASKS, Tasks

if TYPE_CHECKING:
    import pandas as pd

# The backbone reads at most 256 word pieces; longer text is cut before tokenising
# so that a pathological 10 MB line costs milliseconds instead of minutes.
MAX_CHARS = 5000
SPLITS = ("train", "test")


def _read_bytes(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read()
    if not path.exists():
        raise MTLError(f"{path}: file not found")
    if path.is_dir():
        raise MTLError(f"{path}: is a directory, expected a file")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MTLError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MTLError(
            f"{path}: line {line} is not valid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
        ) from None


def clip_text(text: str, where: str = "") -> str:
    """Cut text the backbone would truncate anyway, warning once per call site."""
    if len(text) <= MAX_CHARS:
        return text
    warnings.warn(f"{where or 'input'}: text of {len(text):,} characters truncated to {MAX_CHARS:,}", stacklevel=2)
    return text[:MAX_CHARS]


def normalise(text: str) -> str:
    """Fold case, punctuation and whitespace: two texts equal after this are duplicates."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def read_table(path: str | Path) -> "pd.DataFrame":
    """Read a CSV as strings; only empty cells are missing ("NaN" stays text)."""
    import pandas as pd

    path = Path(path)
    text = _decode(_read_bytes(path), path)
    if not text.strip():
        raise MTLError(f"{path}: file is empty, expected a CSV with a header and rows")
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, csv.Error) as exc:
        raise MTLError(f"{path}: not a valid CSV ({str(exc).strip().splitlines()[-1]})") from None
    df.columns = [str(c).strip() for c in df.columns]
    if df.empty:
        raise MTLError(f"{path}: has a header but no rows")
    return df


def load_dataset(path: str | Path, tasks: Tasks = DEFAULT_TASKS, require_labels: bool = True) -> "pd.DataFrame":
    """Load a labelled CSV: a `text` column, one column per task present, optional `domain` and `split`.

    Empty label cells mean "no label for this task" (masked in loss and metrics). `domain` (free text,
    e.g. "markets") groups rows for leave-one-domain-out CV; it is never a feature.
    Returns a frame with `text`, `line`, the task columns found and `domain` / `split` if present.
    """
    df = read_table(path)
    path = Path(path)
    if "text" not in df.columns:
        raise MTLError(f"{path}: no 'text' column (columns are: {', '.join(df.columns)})")
    df["line"] = np.arange(len(df)) + 2
    missing = df["text"].isna() | (df["text"].fillna("").str.strip() == "")
    if missing.any():
        raise MTLError(f"{path}: line {int(df.loc[missing, 'line'].iloc[0])}: empty text, expected a sentence")
    df["text"] = [clip_text(t, f"{path}: line {n}") for t, n in zip(df["text"], df["line"])]
    present = [t for t in tasks if t in df.columns]
    if require_labels and not present:
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


_WARNED_DUPLICATES: set[tuple[str, int]] = set()  # once per file and count per process: 05 reads BBC a dozen times


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


def read_inputs(source: str | Path) -> list[str]:
    """Sentences to predict: a text file (one per line), a CSV with a `text` column, or `-` (stdin).

    Every line is kept, empty ones too, so outputs line up with inputs.
    """
    path = Path(source)
    if path.suffix.lower() == ".csv":
        df = read_table(path)
        if "text" not in df.columns:
            raise MTLError(f"{path}: no 'text' column (columns are: {', '.join(df.columns)})")
        return [clip_text(t, f"{path}: line {i + 2}") for i, t in enumerate(df["text"].fillna(""))]
    text = _decode(_read_bytes(path), Path("<stdin>") if str(source) == "-" else path)
    lines = text.splitlines()
    return [clip_text(t, f"{source}: line {i + 1}") for i, t in enumerate(lines)]
