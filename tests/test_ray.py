"""The Ray engine (`--engine ray`): a local instance, a `ray start` cluster on 127.0.0.1 (`LoopbackCluster`, used by
the 5,000-row `ray job submit` test in test_stream.py, which reuses the local engine's output there), and the
one-line errors for a cluster that cannot be reached."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, need_ray

need_ray()  # every test here needs Ray

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
# Ray replaces 127.0.0.1 by this machine's network address (and its servers bind there, or to every interface)
# unless told that the cluster is on one machine: with this, every server of the cluster listens on 127.0.0.1.
ONE_MACHINE = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
# That mode makes `ray start --address` (a worker node) refuse to start; this runs Ray's own `ray start` with only
# that refusal lifted (the node still takes 127.0.0.1 from the same setting).
RAY_START_WORKER_NODE = (
    "import sys, types, ray._private.ray_constants as c, ray.scripts.scripts as s; "
    "s.ray_constants = types.SimpleNamespace(**{**vars(c), 'ENABLE_RAY_CLUSTER': True}); "
    "sys.argv[0] = 'ray'; sys.exit(s.main())"
)
# The `ray` command beside this Python (the one installed with the `scale` extra).
RAY = [str(Path(sys.executable).with_name("ray"))] if Path(sys.executable).with_name("ray").is_file() else [sys.executable, "-m", "ray.scripts.scripts"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackCluster:
    """A Ray cluster as `ray start` makes one: a head and one worker node, `cpus` logical CPUs each, every server on
    127.0.0.1, every port free (none of Ray's fixed defaults), everything under a temp dir.

    Each `ray start --block` runs in a session of its own; `stop()` sends it SIGTERM (it then stops what it started)
    and SIGKILLs, by pid, whatever of the cluster is still running after that. Not `ray stop`: it stops every Ray
    process of the user on this machine, other people's clusters included.
    """

    def __init__(self, cpus: int = 1):
        self.cpus = cpus
        self.tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
        self.port, self.dashboard_port = free_port(), free_port()
        self.gcs = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        token = self.tmp / "auth_token"  # token auth, as Ray's default for a new cluster, without touching ~/.ray
        token.touch(mode=0o600)
        token.write_text(secrets.token_hex(32))
        self.env = {**os.environ, **ONE_MACHINE, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "RAY_USAGE_STATS_ENABLED": "0",
                    "AUTOSCALER_METRIC_PORT": str(free_port()), "DASHBOARD_METRIC_PORT": str(free_port())}
        for name in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
            self.env.pop(name, None)
        self.nodes: list[subprocess.Popen] = []

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        common = ["--block", "--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus}", "--object-store-memory=300000000",
                  f"--dashboard-agent-listen-port={free_port()}", "--min-worker-port=0", "--max-worker-port=0",
                  f"--temp-dir={self.tmp}", "--disable-usage-stats"]
        with open(self.tmp / f"{name}.log", "w") as log:
            self.nodes.append(subprocess.Popen(cmd + common, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        return self.nodes[-1]

    def _wait(self, name: str, node: subprocess.Popen, ready, deadline: float) -> None:
        while not ready():
            if node.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray start ({name}) failed:\n" + (self.tmp / f"{name}.log").read_text()[-3000:])
            time.sleep(0.3)

    def _start_nodes(self) -> None:
        def started(name):
            return lambda: "Ray runtime started" in (self.tmp / f"{name}.log").read_text()

        deadline = time.time() + 240
        head = self._spawn("head", [*RAY, "start", "--head", f"--port={self.port}", "--dashboard-host=127.0.0.1",
                                    f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={free_port()}"])
        # One after the other: a worker node started beside a head still starting (a dozen dashboard processes) can
        # miss, on 2 busy cores, the fixed 30 s Ray gives a new raylet to register.
        self._wait("head", head, started("head"), deadline)
        worker = self._spawn("worker", [sys.executable, "-c", RAY_START_WORKER_NODE, "start", f"--address={self.gcs}"])
        self._wait("worker", worker, started("worker"), deadline)

    def __enter__(self) -> LoopbackCluster:
        try:
            try:
                self._start_nodes()
            except RuntimeError:  # a busy machine can still miss those 30 s: once more
                self._stop_nodes()
                self.nodes = []
                self._start_nodes()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def processes(self) -> list:
        """Every process of this cluster: what the two `ray start` started, and the drivers of the jobs sent to it."""
        import psutil

        sessions = {p.pid for p in self.nodes}
        found = []
        for p in psutil.process_iter():
            try:
                if p.pid == os.getpid():
                    continue
                if _sid(p.pid) in sessions or str(self.tmp) in " ".join(p.cmdline()) or p.environ().get("RAY_ADDRESS") == self.gcs:
                    found.append(p)
            except (psutil.Error, OSError):
                continue
        return found

    def driver_of(self, out: Path):
        """The driver of the job that writes `out` (`python -m mtl ... --out OUT`), once it runs."""
        deadline = time.time() + 120
        while time.time() < deadline:
            for p in self.processes():
                try:
                    if p.cmdline()[:3] == [sys.executable, "-m", "mtl"] and str(out) in p.cmdline():
                        return p
                except Exception:  # noqa: BLE001 (it ended meanwhile)
                    continue
            time.sleep(0.2)
        raise AssertionError(f"no driver writing {out}")

    def listening(self) -> set[tuple[str, str, int]]:
        """(process, address, port) of every listening socket of the cluster."""
        import psutil

        out = set()
        for p in self.processes():
            try:
                out |= {(p.name(), c.laddr.ip, c.laddr.port) for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                continue
        return out

    def stop(self) -> list[str]:
        """Stop the cluster and delete its temp dir; returns what had to be SIGKILLed after `ray start` stopped its own."""
        killed = self._stop_nodes()
        shutil.rmtree(self.tmp, ignore_errors=True)
        return killed

    def _stop_nodes(self) -> list[str]:
        import psutil

        for node in reversed(self.nodes):
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
            try:
                node.wait(60)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
        deadline, left = time.time() + 20, self.processes()
        while left and time.time() < deadline:  # workers and drivers notice that their raylet is gone
            time.sleep(0.5)
            left = self.processes()
        killed = []
        for p in left:
            try:
                killed.append(" ".join(p.cmdline())[:200])
                p.kill()
            except psutil.Error:
                continue
        psutil.wait_procs(left, timeout=10)
        return killed

    def job(self, *args: str, timeout: float = 900, wait: bool = True):
        """`ray job ARGS` against this cluster's dashboard, as a user types it: its CompletedProcess, or (`wait=False`)
        the running Popen."""
        cmd = [*RAY, "job", args[0], "--address", self.dashboard, *args[1:]]
        if not wait:
            return subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        return subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def uploaded(self) -> set[str]:
        """The top-level names in the copies of `--working-dir` that jobs ran in."""
        return {p.name for pkg in self.tmp.glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*") if pkg.is_dir() for p in pkg.iterdir()}

    def job_actors(self) -> list[dict]:
        """The actors the cluster has run, alive or not (`ray list actors`): class_name, node_id, state, ..."""
        import json

        r = subprocess.run([*RAY, "list", "actors", "--address", self.dashboard, "--format", "json", "--detail", "--limit", "1000"],
                           env=self.env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(r.stdout)


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def small_corpus(tmp: Path, n: int = 300) -> Path:
    from test_stream import short_texts

    src = tmp / "small.parquet"
    pq.write_table(pa.table({"text": short_texts(n, "small") + [""]}), src)  # an empty text is a row too
    return src


def same_rows(a: Path, b: Path) -> None:
    import numpy as np

    left, right = pq.read_table(a), pq.read_table(b)
    assert left.schema == right.schema
    for col in ("source", "text", "topic", "sentiment", "error"):
        assert left.column(col).to_pylist() == right.column(col).to_pylist(), col
    for col in ("topic_probs", "sentiment_probs"):
        x, y = left.column(col).to_pylist(), right.column(col).to_pylist()
        assert [d is None for d in x] == [d is None for d in y], col  # None: an empty text
        assert [list(d) for d in x if d] == [list(d) for d in y if d], col
        np.testing.assert_allclose([list(d.values()) for d in x if d], [list(d.values()) for d in y if d], atol=1e-5)


# -- errors: one line, exit code 2, at once ------------------------------------------------------------------
@pytest.mark.parametrize("how", ["refused", "unknown host", "dashboard url"])
def test_an_unreachable_cluster_is_one_line_and_exit_code_2(tmp_path, trained, how, monkeypatch):
    """At once: the address is checked before `ray.init`, which would retry for minutes and then exit."""
    import ray
    from conftest import mtl_main

    src = tmp_path / "in.txt"
    src.write_text("One sentence.\n")
    address = {"refused": f"127.0.0.1:{free_port()}", "unknown host": "no-such-host.invalid:6379",
               "dashboard url": f"http://127.0.0.1:{free_port()}"}[how]
    monkeypatch.setenv("RAY_ADDRESS", address)
    monkeypatch.setattr(ray, "init", lambda *a, **kw: pytest.fail("ray.init was called for an unreachable cluster"))
    r = mtl_main("predict", str(src), "--out", str(tmp_path / "out"), "--engine", "ray", "--model", str(trained["path"]))
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("mtl predict: error: "), r.stderr
    assert address in r.stderr and "$RAY_ADDRESS" in r.stderr
    assert not list((tmp_path / "out").glob("part-*"))


def test_a_relative_out_under_ray_job_submit_is_refused(tmp_path, monkeypatch):
    from mtl.corpus.ray_engine import ray_engine
    from mtl.corpus.stream import Job
    from mtl.errors import MTLError

    copy = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0"  # where a job's driver runs
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    with pytest.raises(MTLError, match="--out preds: under `ray job submit --working-dir`.*absolute path"):
        ray_engine(Job("predict", ["in.txt"], Path("preds")))  # refused before any Ray is joined


# -- a local instance: started on 127.0.0.1 and gone with the run ---------------------------------------------
@pytest.mark.slow
def test_a_local_ray_instance_listens_on_loopback_only_gives_the_local_rows_and_leaves_nothing(tmp_path, trained, cache_dir):
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # not /tmp/ray; short for Ray's socket paths
    # A token of its own: a new local instance otherwise writes one to ~/.ray, which later `ray start`s pick up.
    env = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", *ONE_MACHINE)},
           "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    try:
        _local_instance(tmp_path, trained, cache_dir, env)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _local_instance(tmp_path, trained, cache_dir, env):
    import psutil

    src = small_corpus(tmp_path)
    common = ["--chunk-size", "100", "--model", str(trained["path"]), "--cache-dir", str(cache_dir)]
    from conftest import mtl_main

    local = mtl_main("predict", str(src), "--out", str(tmp_path / "local"), *common)  # the local engine, in this process
    assert local.returncode == 0, local.stderr[-3000:]
    log = tmp_path / "ray.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "mtl", "predict", str(src), "--out", str(tmp_path / "ray"), "--engine", "ray",
                                 "--workers", "2", *common], cwd=ROOT, env=env, stderr=fh)
    seen, listening = {}, set()
    try:
        while proc.poll() is None:  # Ray's processes are this run's descendants: watch what they listen on
            try:
                for p in psutil.Process(proc.pid).children(recursive=True):
                    seen.setdefault(p.pid, p)
                    listening |= {(p.name(), c.laddr.ip) for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                pass
            time.sleep(0.3)
        _, alive = psutil.wait_procs(list(seen.values()), timeout=30)
    finally:  # a failed run leaves nothing either
        proc.kill()
        for p in seen.values():
            try:
                p.kill()
            except psutil.Error:
                pass
    stderr = log.read_text()
    assert proc.returncode == 0, stderr[-3000:]
    assert "301 rows in 4 shards" in stderr and "Ray, 2 workers" in stderr
    assert any(name == "gcs_server" for name, _ in listening), listening
    assert {ip for _, ip in listening} <= LOOPBACK, listening
    assert not alive, [" ".join(p.cmdline())[:200] for p in alive]  # the run stopped the instance it started
    same_rows(tmp_path / "ray", tmp_path / "local")
