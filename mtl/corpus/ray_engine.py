"""`--engine ray`: a corpus run's chunks labelled by actors on a Ray cluster (more machines, or GPUs, than one).

The driver (this process, e.g. under `ray job submit`) reads the input and writes the shards exactly as the
local engine does (`mtl.corpus.stream`): chunk i becomes `part-<i>` atomically, finished shards are skipped
on a rerun, so an interrupted Ray run keeps what it finished. Only the labelling moves: each actor loads the
encoder and the heads once, then labels the chunks it is sent through `mtl.predict.label`, the function the
local engine calls. At most two chunks per actor are in flight, so memory stays bounded whatever the corpus.
Workers need no shared file system: texts travel to them and predictions back; the checkpoint travels as
bytes (safetensors, no pickle).

With `--address` (or `$RAY_ADDRESS`, which `ray job submit` sets for its driver) it joins that cluster, once a TCP
connection shows that it answers (otherwise a one-line error, where `ray.init` would retry for minutes); without,
it starts a local instance in Ray's one-machine mode, every server on 127.0.0.1, and stops it at the end.
Ray is an optional extra (`pip install -e ".[scale]"`: `ray[default]`, which `ray start` with the dashboard and
`ray job submit` need) and imported only here.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path

from mtl.corpus.stream import Engine, Job
from mtl.engine.devices import device_for
from mtl.engine.embed import EmbedSpec
from mtl.errors import MTLError

WORKERS = 1  # labelling actors unless --workers says
IN_FLIGHT_PER_ACTOR = 2  # one chunk labelling, one waiting: the actor never idles and memory stays bounded
LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's one-machine mode (its default on macOS): 127.0.0.1 stays 127.0.0.1
REACH_TIMEOUT_S = 5  # a cluster that does not accept a TCP connection by then is reported as unreachable


class Labeller:
    """One Ray actor: the encoder and the heads are loaded once, then every chunk goes through them."""

    def __init__(self, ckpt_bytes: bytes | None, spec: EmbedSpec):
        from mtl.checkpoint import load_checkpoint

        self.spec = spec
        self.ckpt = None
        if ckpt_bytes is not None:
            # Workers may not see the driver's files: the checkpoint travels as bytes and is read as safetensors.
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.safetensors"
                path.write_bytes(ckpt_bytes)
                self.ckpt = load_checkpoint(path)

    def label(self, i: int, texts: list[str]):
        from mtl.engine.embed import encode
        from mtl.predict import embed_for, label

        if self.ckpt is not None:
            return i, label(texts, lambda good: embed_for(self.ckpt, "<checkpoint>", good, self.spec)[0], self.ckpt)
        return i, label(texts, lambda good: encode(good, self.spec)[0])


def _root_cause(exc: BaseException) -> str:
    """The innermost `SomeError: message` line of a Ray traceback (Ray wraps it in several layers)."""
    import re

    causes = re.findall(r"^(?:\S+\.)?(\w*(?:Error|Exception)): (.+)$", str(exc), re.M)
    name, msg = causes[-1] if causes else (type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "")
    return (msg if name == "MTLError" else f"{name}: {msg}")[:300]


def connect(address: str | None, workers: int) -> tuple[str, bool]:
    """Join the cluster at `address` (or $RAY_ADDRESS), or start a local one on 127.0.0.1.

    Returns (where it runs, whether this call connected: then the caller disconnects when done).
    """
    origin = "--address" if address else "$RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    local = address in (None, "local")
    if local:
        # Ray turns 127.0.0.1 into this machine's network address and binds its servers there (or on every
        # interface) unless told it is on one machine only: with this set, every server it starts is on 127.0.0.1.
        os.environ[LOCAL_ONLY] = "0"
    elif address.startswith(("http://", "https://")):
        raise MTLError(f"{origin} {address}: that is the Ray dashboard (job submission) address; give the cluster's address "
                       f"HOST:PORT (`ray start --head --port`, 6379 by default), or submit the run with `ray job submit --address {address} ...`")
    try:
        import ray
    except ImportError:
        raise MTLError("--engine ray: Ray is not installed; pip install -e '.[scale]'") from None
    if ray.is_initialized():
        return "the running Ray instance", False
    where = "a local Ray instance" if local else f"the Ray cluster at {address}"
    if not local:
        os.environ["RAY_ADDRESS"] = address  # Ray reads $RAY_ADDRESS before its address argument: --address wins
        _check_reachable(address, origin)
    tries = 2 if local else 1  # a busy machine can miss Ray's fixed 30 s for a new raylet to register: a local start tries twice
    for left in range(tries - 1, -1, -1):
        try:
            if local:
                # Local: the actors take one logical CPU each; one more lets the driver's own tasks run beside them.
                ray.init(address="local", num_cpus=max(os.cpu_count() or 1, workers + 1), include_dashboard=False,
                         log_to_driver=False, logging_level=logging.WARNING)
            else:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            break
        except (Exception, SystemExit) as exc:  # noqa: BLE001 (Ray raises ConnectionError, RuntimeError, a bare Exception, or exits)
            ray.shutdown()
            if not left:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise MTLError(f"--engine ray: cannot join {where} ({first[:200]})") from None
    return where, True


def _check_reachable(address: str, origin: str) -> None:
    """A one-line error, at once, for a cluster that does not answer (`ray.init` would retry for minutes, then exit)."""
    import socket

    target = address
    if not address.startswith("ray://"):  # Ray Client addresses are dialled as given
        try:  # how Ray will dial: `auto` looked up, 127.0.0.1 replaced by this machine's address (see LOCAL_ONLY)
            from ray._private.services import canonicalize_bootstrap_address
        except ImportError:  # a private helper: without it, check the address as given
            canonicalize_bootstrap_address = None
        if canonicalize_bootstrap_address is not None:
            try:
                target = canonicalize_bootstrap_address(address) or address
            except Exception as exc:  # noqa: BLE001 (no cluster found for `auto`, a malformed address)
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise MTLError(f"--engine ray: cannot reach the Ray cluster at {address} ({origin}): {first[:200]}") from None
        elif address == "auto":
            return
    hostport = _host_port(target)
    if hostport is None:
        raise MTLError(f"{origin} {address}: not a Ray cluster address; give HOST:PORT (e.g. 10.0.0.5:6379), ray://HOST:PORT or auto")
    host, port = hostport
    try:
        socket.create_connection((host, port), timeout=REACH_TIMEOUT_S).close()
        return
    except socket.gaierror:
        reason = f"unknown host {host}"
    except TimeoutError:
        reason = f"no answer from {host}:{port} within {REACH_TIMEOUT_S} s"
    except OSError as exc:
        reason = f"{os.strerror(exc.errno).lower() if exc.errno else exc} at {host}:{port}"
    given = _host_port(address)
    loopback = ("127.0.0.1", "localhost", "::1")
    if given and given[0] in loopback and host not in loopback:
        reason += f" (Ray dials this machine's address for {given[0]}; for a cluster on 127.0.0.1 only, set {LOCAL_ONLY}=0 as for its `ray start`)"
    raise MTLError(f"--engine ray: cannot reach the Ray cluster at {address} ({origin}): {reason}")


def _host_port(address: str) -> tuple[str, int] | None:
    """("10.0.0.5", 6379) from "10.0.0.5:6379", "ray://10.0.0.5:6379" or "[::1]:6379"; None if it has no port."""
    host, sep, port = address.removeprefix("ray://").split("/")[0].rpartition(":")
    return (host.strip("[]"), int(port)) if sep and host and port.isdigit() else None


def ray_engine(job: Job, spec: EmbedSpec | None = None, workers: int | None = None, address: str | None = None) -> tuple[Engine, str]:
    """An `Engine` (see `mtl.corpus.stream`) whose chunks are labelled by `workers` Ray actors, and its name.

    `spec` is how the driver would embed; each actor embeds the same way, on the device `devices.device_for` picks on
    the cluster's resources, with the cache folder made absolute and no cache writes (a corpus is seen once)."""
    if not job.out.is_absolute() and "working_dir_files" in Path.cwd().parts:
        raise MTLError(f"--out {job.out}: under `ray job submit --working-dir`, a relative path lands in Ray's temporary copy "
                       "of that folder; give an absolute path")
    spec = spec or EmbedSpec()
    workers = workers or WORKERS
    _, owned = connect(address, workers)
    import ray

    try:
        device = device_for(spec.backend, spec.device, cluster_gpus=ray.cluster_resources().get("GPU", 0))
        actor_spec = replace(spec, device=device, cache_dir=spec.cache_dir and str(Path(spec.cache_dir).resolve()), cache=False)
        ckpt = ray.put(Path(job.model).read_bytes()) if job.model else None  # one copy in the object store, whatever the actors
        actor = ray.remote(num_cpus=1, num_gpus=1 if device == "cuda" else 0)(Labeller)
        pool = [actor.remote(ckpt, actor_spec) for _ in range(workers)]
    except BaseException:
        if owned:
            ray.shutdown()
        raise

    def run(chunks, progress):
        pending: dict = {}  # object ref -> (actor index, rows)
        load = [0] * workers
        try:
            for i, texts, _ in chunks:
                while min(load) >= IN_FLIGHT_PER_ACTOR:
                    yield _take(ray, pending, load, progress)
                a = load.index(min(load))
                pending[pool[a].label.remote(i, texts)] = (a, len(texts))
                load[a] += 1
            while pending:
                yield _take(ray, pending, load, progress)
        except ray.exceptions.RayError as exc:
            raise MTLError(f"Ray run failed: {_root_cause(exc)}") from None
        finally:  # done, failed or interrupted: the actors go (with what they still hold), and so does a Ray this run joined
            for a in pool:
                try:
                    ray.kill(a)
                except Exception:  # noqa: BLE001 (gone already, with its cluster)
                    pass
            if owned:
                ray.shutdown()

    return run, f"Ray, {workers} worker{'s' * (workers > 1)}"


def _take(ray, pending: dict, load: list[int], progress):
    """Wait for the next finished chunk; return (index, Predictions)."""
    (ref,), _ = ray.wait(list(pending), num_returns=1)
    a, n = pending.pop(ref)
    load[a] -= 1
    result = ray.get(ref)
    progress(n)
    return result

