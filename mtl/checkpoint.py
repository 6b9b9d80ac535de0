"""Checkpoints: the heads' weights plus metadata, in safetensors (never pickle).

safetensors holds only tensors and a JSON header, so loading one cannot run code,
and it loads with numpy alone (no torch import on the `mtl predict` path). The
frozen backbone is *not* stored: the metadata names it (identity + backend).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtl.atomic import write_bytes
from mtl.errors import MTLError
from mtl.tasks import Tasks

FORMAT = "mtl-heads/1"


@dataclass
class Checkpoint:
    state: dict[str, np.ndarray]
    meta: dict

    @property
    def tasks(self) -> Tasks:
        return self.meta["tasks"]

    @property
    def layers(self) -> str:
        """Which frozen layers its heads read (checkpoints from before `--layers` read the default, the last)."""
        from mtl.engine.embed import EmbedSpec

        return self.meta.get("layers", EmbedSpec.layers)

    @property
    def backbone(self) -> str:
        from mtl.engine.backbone import DEFAULT_BACKBONE

        return self.meta.get("backbone", DEFAULT_BACKBONE)


def save_checkpoint(path: str | Path, state: dict[str, np.ndarray], meta: dict) -> None:
    """Write atomically: an interrupted save leaves the previous checkpoint intact."""
    from safetensors.numpy import save

    meta = {"format": FORMAT, **meta}
    data = save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}, metadata={"mtl": json.dumps(meta)})
    write_bytes(path, data)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and sanity-check a checkpoint; any problem is a one-line MTLError."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    from mtl.data import existing_file

    path = existing_file(path, what="checkpoint", missing="; train one first with `mtl train`")
    raw = path.read_bytes()
    try:
        state = load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        meta = json.loads(json.loads(raw[8 : 8 + header_len]).get("__metadata__", {}).get("mtl", "null"))
    except (SafetensorError, ValueError, UnicodeDecodeError, OverflowError) as exc:
        raise MTLError(f"{path}: not an mtl checkpoint (unreadable safetensors file: {str(exc).splitlines()[0][:80]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise MTLError(f"{path}: not an mtl checkpoint (no '{FORMAT}' metadata)")
    ckpt = Checkpoint(state, meta)
    _check_shapes(ckpt, path)
    return ckpt


def _check_shapes(ckpt: Checkpoint, path: Path) -> None:
    from mtl.heads import TRUNK, has_trunk

    dim = ckpt.meta.get("embedding_dim")
    if has_trunk(ckpt.state):  # shared trunk (share="trunk"): the heads read its output
        trunk = ckpt.state[f"{TRUNK}.0.weight"]
        if trunk.ndim != 2 or trunk.shape[1] != dim:
            raise MTLError(f"{path}: shared trunk weights do not match the {dim}-d embedding")
        dim = trunk.shape[0]
    for task, labels in ckpt.tasks.items():
        keys = sorted((k for k in ckpt.state if k.startswith(f"{task}.") and k.endswith(".weight")), key=lambda k: int(k.split(".")[1]))
        if not keys:
            raise MTLError(f"{path}: checkpoint lists task {task!r} but has no weights for it")
        first, last = ckpt.state[keys[0]], ckpt.state[keys[-1]]
        if first.shape[1] != dim or last.shape[0] != len(labels):
            raise MTLError(f"{path}: weights for task {task!r} do not match its {len(labels)} labels / {dim}-d embedding")


def check_compatible(ckpt: Checkpoint, path: str | Path, backbone_identity: str, dim: int) -> None:
    """Refuse a checkpoint made for another backbone or embedding size (its label lists travel with it)."""
    if ckpt.meta.get("backbone_identity") != backbone_identity:
        raise MTLError(
            f"{path}: checkpoint was trained on backbone {ckpt.meta.get('backbone_identity')!r}, "
            f"but this machine's copy is {backbone_identity!r}; retrain it here (mtl train) or install the backbone it names"
        )
    if ckpt.meta.get("embedding_dim") != dim:
        raise MTLError(f"{path}: checkpoint expects {ckpt.meta.get('embedding_dim')}-d embeddings, the backbone gives {dim}-d")
