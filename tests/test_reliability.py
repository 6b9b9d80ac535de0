"""Nothing is lost, nothing loaded runs code: crash-safe writes, crafted pickles, concurrent caches."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import ROOT, linked_cache, mtl_main

from mtl.checkpoint import load_checkpoint
from mtl.engine.embed import EmbedSpec, encode


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_keeps_the_previous_checkpoint(trained, tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(trained["path"].read_bytes())
    before = target.read_bytes()
    marker = tmp_path / "writing"
    # A child that trains and saves with the real code path (mtl.checkpoint.write_bytes -> atomic_path); only
    # os.fsync is slowed, so the kill lands after the new bytes are in the temp file and before the rename.
    child = textwrap.dedent(
        f"""
        import os, pathlib, time
        def slow_fsync(fd):
            pathlib.Path({str(marker)!r}).touch()
            time.sleep(60)
        os.fsync = slow_fsync
        from mtl.cli import main
        main(["train", "--epochs", "2", "--device", "cpu", "--out", {str(target)!r}, "--metrics", {str(tmp_path / 'm.json')!r}])
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert marker.exists(), "child never reached the checkpoint write"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (partial,) = tmp_path.glob(".model.safetensors.*")  # the new checkpoint, written but never renamed into place
    assert partial.stat().st_size > 0 and partial.read_bytes() != before
    assert target.read_bytes() == before
    assert load_checkpoint(target).tasks == trained["meta"]["tasks"]


def test_crafted_pickle_checkpoint_does_not_execute(tmp_path):
    canary = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {canary}",))

    import torch

    evil = tmp_path / "evil.pth"
    torch.save({"heads": Payload()}, evil)  # a classic malicious torch checkpoint
    evil_st = tmp_path / "evil.safetensors"
    evil_st.write_bytes(pickle.dumps(Payload()))
    for path in (evil, evil_st):
        r = mtl_main("predict", "--model", str(path), stdin="hello\n")
        assert r.returncode == 2 and "not an mtl checkpoint" in r.stderr
    assert not canary.exists()


@pytest.mark.slow
def test_two_processes_encoding_into_one_cache(tmp_path):
    texts = [f"Sentence {i} about the election and the cup final." for i in range(300)]
    cache = linked_cache(tmp_path / "shared")  # the children find the ONNX export there and only encode
    code = textwrap.dedent(
        f"""
        import sys
        from mtl.engine.embed import EmbedSpec, encode
        texts = {texts!r}
        part = texts[int(sys.argv[1])::2] + texts[:150]
        encode(part, EmbedSpec(backend="onnx", cache_dir={str(cache)!r}))
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], cwd=ROOT) for i in (0, 1)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    x, stats = encode(texts, EmbedSpec(backend="onnx", cache_dir=cache))
    assert stats.encoded == 0 and stats.cached == len(texts)
    ref, fresh = encode(texts[:20], EmbedSpec(backend="onnx", cache_dir=linked_cache(tmp_path / "fresh")))
    assert fresh.encoded == 20
    np.testing.assert_allclose(x[:20], ref, atol=1e-5)


@pytest.mark.slow
def test_papermill_parameter_of_the_wrong_type_is_one_line(tmp_path):
    r = mtl_main("notebooks", "--only", "03", "-p", "epochs", "ten", "--out", str(tmp_path))
    assert r.returncode == 2
    assert "parameter epochs: expected a positive integer, got 'ten'" in r.stderr
    assert "Traceback" not in r.stderr
