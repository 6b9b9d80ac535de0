"""The Docker image works as the README says: the smoke checks of the image-building script, on a built image.

Runs only where podman or docker can see the image (it never builds one); otherwise skips with the reason.
Settings: MTL_DOCKER = the engine command (default: podman, else docker; e.g.
"podman --root /tmp/dock/storage --runroot /tmp/dock/run" for the script's storage), MTL_IMAGE (default multi-task-nlp).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid

import pytest

pytestmark = pytest.mark.slow

IMAGE = os.environ.get("MTL_IMAGE", "multi-task-nlp")


def _engine() -> list[str]:
    if os.environ.get("MTL_DOCKER"):
        cmd = shlex.split(os.environ["MTL_DOCKER"])
    else:
        found = next((e for e in ("podman", "docker") if shutil.which(e)), None)
        if found is None:
            pytest.skip("neither podman nor docker is on PATH")
        cmd = [found]
    try:
        seen = subprocess.run([*cmd, "image", "inspect", IMAGE], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"{cmd[0]} does not answer: {e}")
    if seen.returncode != 0:
        pytest.skip(f"image {IMAGE!r} not built where `{' '.join(cmd)}` looks (set MTL_DOCKER / MTL_IMAGE): {seen.stderr.strip()[:200]}")
    return cmd


@pytest.fixture(scope="module")
def engine() -> list[str]:
    return _engine()


def run(engine, *args: str, stdin: str | None = None, timeout: float = 600) -> str:
    """`docker run --rm --network none IMAGE args...`: offline, fresh container; returns stdout, fails on non-zero exit."""
    res = subprocess.run([*engine, "run", "--rm", "-i", "--network", "none", *args], input=stdin or "", capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
    return res.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("token", [None, "mtl-test-token"], ids=["token-in-logs", "JUPYTER_TOKEN"])
def test_jupyterlab_answers_at_the_repo_root(engine, token):
    port, name = _free_port(), f"mtl-lab-{uuid.uuid4().hex[:8]}"
    env = ["-e", f"JUPYTER_TOKEN={token}"] if token else []
    subprocess.run([*engine, "run", "-d", "--name", name, "-p", f"{port}:8888", *env, IMAGE], check=True, capture_output=True, timeout=120)
    try:
        body = None
        for _ in range(120):
            if token is None:
                logs = subprocess.run([*engine, "logs", name], capture_output=True, text=True, timeout=30)
                m = re.search(r"token=([0-9a-f]+)", logs.stdout + logs.stderr)
                if not m:
                    time.sleep(1)
                    continue
                token = m.group(1)
            try:
                body = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=2).read())
                break
            except OSError:
                time.sleep(1)
        assert body is not None, "JupyterLab did not answer (or printed no token)"
        names = {item["name"] for item in body["content"]}
        assert {"notebooks", "data", "figures", "README.md"} <= names, names
    finally:
        subprocess.run([*engine, "rm", "-f", name], capture_output=True, timeout=60)


def test_predict_works_offline_in_a_fresh_container_without_training(engine):
    out = run(engine, IMAGE, "mtl", "predict", "-", stdin="The striker scored a late winner.\n")
    assert "topic=sports" in out, out


def test_predict_reads_a_mounted_csv(engine, tmp_path):
    (tmp_path / "in.csv").write_text("text\nParliament passed the budget after a long debate.\n")
    tmp_path.chmod(0o755)
    out = run(engine, "-v", f"{tmp_path}:/data:ro", IMAGE, "mtl", "predict", "/data/in.csv", "--format", "jsonl")
    assert json.loads(out.splitlines()[0])["topic"] == "politics", out


def test_train_then_predict_offline(engine):
    out = run(engine, IMAGE, "sh", "-c", "mtl train >/dev/null && echo 'Voters rejected the budget.' | mtl predict -")
    assert "topic=politics" in out, out


def test_suite_passes_inside_the_image_offline(engine):
    out = run(engine, IMAGE, "python", "-m", "pytest", "-q", "-m", "not slow", "-p", "no:cacheprovider", timeout=1800)
    assert re.search(r"\d+ passed", out), out[-2000:]
