"""`siglip embed --engine ray`: the same run, with the images embedded by actors on a Ray cluster.

The driver (this process) plans as a local run does: the inputs in order, the resume filter, the
manifest, the report, the progress and the summary (batch.run_plan). Ray Data gets only rows of
{index, input path, output path}; each actor (EmbedWorker) loads the model once and runs the project's
own decode threads, model and atomic writer (batch.write_row) on them, and sends back one small status
per image. The embeddings never travel through Ray's object store. Ray does the scheduling, the
retries of lost actors and the GPU placement: there is no queue or retry logic here.

Folder outputs only: a stacked file is one stream of rows written by one process (refused, one line).

Ray is imported only here, and only when --engine ray runs; without it, one line says how to install it.
"""

from __future__ import annotations

import io
import math
import os
import signal
import socket
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .errors import OutputError, UsageError

INSTALL = 'pip install "siglip-cli[ray]"'
CONNECT_HELP = "check --ray-address (or RAY_ADDRESS), or leave both unset to start a local cluster for the run"


@dataclass
class RaySettings:
    """How the run uses the cluster (the --ray-* options)."""

    address: str | None = None  # None: RAY_ADDRESS, else a local cluster started for the run
    workers: int = 1  # actors, each with the model loaded once
    gpus_per_worker: float | None = None  # None: 1 where the cluster has GPUs (and the run is not CPU-only), else 0
    cpus_per_worker: float | None = None  # None: 1, or on a local cluster what leaves Ray Data a CPU of its own
    rows_per_call: int | None = None  # images per actor call (default: 4 model batches, so decoding overlaps)
    debug: bool = False  # --debug: Ray's own log lines stay on stderr

    def cluster(self) -> str | None:
        """The address to join: --ray-address, else RAY_ADDRESS; None: a local cluster for the run."""
        return self.address or os.environ.get("RAY_ADDRESS") or None
    started: bool = field(default=False, init=False)  # this run started the local cluster (and shuts it down)


def import_ray():
    """ray, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError(f"--engine ray needs Ray Data, which is not installed: {INSTALL}") from None
    return ray


def check_engine(engine: str, folder: bool, settings: RaySettings) -> None:
    """Refuse what --engine ray cannot do, before any model is loaded."""
    if engine == "local":
        return
    if not folder:
        raise UsageError("--engine ray writes one file per image: use a folder output (-o DIR/); a stacked file "
                         "is one stream written by one process (leave out --engine ray)")
    if settings.workers < 1:
        raise UsageError(f"--ray-workers must be at least 1, got {settings.workers}")
    for name, value in (("--ray-gpus-per-worker", settings.gpus_per_worker),
                        ("--ray-cpus-per-worker", settings.cpus_per_worker)):
        if value is not None and (not math.isfinite(value) or value < 0):
            raise UsageError(f"{name} must be a number >= 0, got {value}")
    import_ray()


def probe(address: str) -> None:
    """A host:port (or ray://host:port) that answers within seconds, or a one-line error: Ray itself would
    retry an unreachable address for minutes, printing warnings."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if target in ("auto", "local") or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise UsageError(f"cannot connect to the Ray cluster at {address} ({e.strerror or e}): {CONNECT_HELP}") \
            from None


def quiet_backend() -> None:
    """Ray's C++ core writes its own log lines to file descriptor 2 (an actor-restart caveat on every run,
    a crash dump on SIGTERM), into the progress bar. From here on Python's sys.stderr, where siglip's
    lines and the progress bar go, writes to a copy of fd 2, and fd 2 itself (and the Ray processes
    started from here, which log to Ray's session folder anyway) goes to /dev/null. Not with --debug."""
    try:
        sys.stderr.flush()
        copy = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
    except (OSError, ValueError, AttributeError):
        return
    old = sys.stderr
    sys.stderr = io.TextIOWrapper(io.FileIO(copy, "w"), encoding=getattr(old, "encoding", None) or "utf-8",
                                  errors=getattr(old, "errors", None) or "backslashreplace", line_buffering=True)


def connect(settings: RaySettings):
    """Join the cluster at --ray-address / RAY_ADDRESS, or start a local one for this run (quietly, no usage
    statistics sent: a command-line tool does not report on its user). A process already connected to Ray
    (a notebook, a test) runs on that cluster, as it is."""
    import logging

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray = import_ray()
    if ray.is_initialized():  # a notebook's or a test's own connection: used, and left open
        return _configure(ray)
    for name in ("ray", "ray.data"):  # Ray's notices ("progress bars disabled") are not the user's business
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"ray\.")
    address = settings.cluster()
    if address is not None:
        probe(address)
    if not settings.debug:
        quiet_backend()
    options = dict(logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        if address is None:
            # address="local": a new cluster even where `ray start` left one running (--ray-address auto joins it)
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, **options)
            settings.started = True
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise UsageError(f"cannot connect to {where} ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
                         f"{CONNECT_HELP}") from None
    finally:
        # ray.init takes SIGTERM over (it exits with status 15, after a crash dump): a scheduler's stop is
        # siglip's again, unwinding like Ctrl-C (temp files go, the report is written; exit 143).
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    return _configure(ray)


def _configure(ray):
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # statuses come back in input order: the report's order
    ctx.enable_progress_bars = False  # siglip's own progress line counts the images
    ctx.print_on_execution_start = False
    return ray


def resources(ray, settings: RaySettings, device: str, quantize: str) -> tuple[float, float, int]:
    """(CPUs, GPUs, torch threads) for each actor.

    On a local cluster the actors together take less than every CPU (Ray Data's own tasks need one, or
    the job waits forever) and share the cores for their matmul threads; Ray sets OMP_NUM_THREADS to an
    actor's CPUs, so torch's threads are set here deliberately.
    """
    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 1)), float(total.get("GPU", 0))
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    node_cpus = max((float(r.get("CPU", 0)) for r in nodes), default=cpus)
    node_gpus = max((float(r.get("GPU", 0)) for r in nodes), default=gpus)
    n = settings.workers
    g = settings.gpus_per_worker
    if g is None:
        g = 1.0 if gpus >= n and node_gpus >= 1 and device != "cpu" and quantize == "none" else 0.0
    if g > node_gpus:
        raise UsageError(f"--ray-gpus-per-worker {g:g}: no node of the Ray cluster has that many GPUs (the largest "
                         f"has {node_gpus:g}): use {node_gpus:g} or fewer, 0 to run on CPUs")
    if device == "cuda" and g == 0:
        raise UsageError(f"--device cuda: the actors reserve no GPU (the Ray cluster has {gpus:g}): "
                         "set --ray-gpus-per-worker, or leave out --device cuda")
    c = settings.cpus_per_worker
    if c is None:
        c = 1.0 if not settings.started else max(0.25, math.floor(min(1.0, (cpus - 1) / n) * 4) / 4)
    if c > node_cpus:
        raise UsageError(f"--ray-cpus-per-worker {c:g}: no node of the Ray cluster has that many CPUs (the largest "
                         f"has {node_cpus:g}): use {node_cpus:g} or fewer")
    threads = max(1, int(cpus // n)) if settings.started else max(1, math.ceil(c))
    return c, g, threads


@dataclass
class WorkerSpec:
    """What each actor needs to build the same Embedder as the driver's (the model by its resolved files)."""

    model: object  # a checkpoint.ModelSource, or None with random_init
    random_init: bool
    load: dict  # Embedder.load's options: pool, norm, image_size, device, dtype, quantize, ...
    out: str
    out_dtype: str
    overwrite: bool
    batch_size: int
    decode_workers: int | None
    threads: int


class EmbedWorker:
    """A Ray actor: the model loaded once; each call embeds a batch of rows and writes their files."""

    def __init__(self, spec: WorkerSpec):
        import numpy as np
        import torch

        from .embed import Embedder

        torch.set_num_threads(spec.threads)
        self.spec = spec
        self.embedder = Embedder.load(spec.model, random_init=spec.random_init, **spec.load)
        self.metadata = {**self.embedder.metadata(), "dtype": spec.out_dtype}
        self.dtype = np.dtype(spec.out_dtype)

    def __call__(self, batch: dict) -> dict:
        from .batch import write_row

        paths = [os.fsdecode(bytes(p)) for p in batch["path"]]
        targets = [os.fsdecode(bytes(t)) for t in batch["target"]]
        out = {"status": [], "reason": [], "output": [], "errno": [], "shape": []}

        def add(status: str, reason: str = "", output: str = "", errno: int = -1, shape: tuple = ()):
            for key, value in zip(out, (status, reason, output, errno, ",".join(map(str, shape)))):
                out[key].append(value)

        results = self.embedder.embed_iter(paths, self.spec.batch_size, self.spec.decode_workers)
        for r, target, source in zip(results, targets, batch["source"]):
            if r.error is not None:
                add("failed", r.error)
                continue
            row = r.embedding.astype(self.dtype, copy=False)
            try:
                output = write_row(Path(self.spec.out), Path(target), row, {**self.metadata, "source": str(source)},
                                   self.spec.overwrite)
            except OutputError as e:
                add("failed", str(e), errno=e.errno or 0)
                continue
            add("embedded", output=output, shape=row.shape)
        return {"index": batch["index"], **out}


class RayEngine:
    """batch.Engine on a Ray cluster: steps in, (step, Written or None) out, in input order."""

    def __init__(self, settings: RaySettings, spec: WorkerSpec, target):
        self.settings, self.spec, self.target = settings, spec, target
        spec.out = os.path.abspath(spec.out)

    def __call__(self, embedder, steps: Iterable, batch_size: int, workers: int) -> Iterator[tuple]:
        from .batch import Written
        from .console import unicode_text

        steps = list(steps)
        # Absolute paths: an actor's working folder is not the driver's (on another node, not even its machine).
        rows = [{"index": i, "path": os.fsencode(os.path.abspath(s.item.path)),
                 "target": os.fsencode(os.path.abspath(self.target(s.item))),
                 "source": unicode_text(str(s.item.path))} for i, s in enumerate(steps) if s.status == "embed"]
        done = {}
        statuses = self._run(rows) if rows else iter(())
        for i, step in enumerate(steps):
            if step.status != "embed":
                yield step, None
                continue
            while i not in done:
                row = next(statuses)
                done[int(row["index"])] = row
            row = done.pop(i)
            if row["status"] == "embedded":  # the output as the driver names it (relative stays relative)
                shape = [int(n) for n in str(row["shape"]).split(",")]
                yield step, Written(output=str(self.target(step.item)), shape=shape)
            else:
                errno = int(row["errno"])
                yield step, Written(error=str(row["reason"]), errno=None if errno < 0 else errno)

    def check(self) -> None:
        """What can be refused before the run writes anything (check_engine has imported Ray): the address
        answering."""
        address = self.settings.cluster()
        if address is not None:
            probe(address)

    def start(self) -> None:
        """Connect (or start the local cluster) and check what the actors would reserve: called before the
        run writes anything, so a wrong address or a GPU the cluster lacks is refused up front."""
        self.ray = connect(self.settings)
        self.cpus, self.gpus, self.spec.threads = resources(self.ray, self.settings,
                                                            self.spec.load.get("device", "auto"),
                                                            self.spec.load.get("quantize", "none"))

    def _run(self, rows: list[dict]) -> Iterator[dict]:
        if getattr(self, "ray", None) is None:
            self.start()
        ray = self.ray
        try:
            # A block is one actor call: every actor gets work, and decoding overlaps the model within a call.
            per_call = self.settings.rows_per_call or self.spec.batch_size * 4
            per_call = max(1, min(per_call, math.ceil(len(rows) / self.settings.workers)))
            ds = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / per_call))
            ds = ds.map_batches(EmbedWorker, fn_constructor_kwargs={"spec": self.spec}, batch_size=per_call,
                                compute=ray.data.ActorPoolStrategy(size=self.settings.workers), num_cpus=self.cpus,
                                num_gpus=self.gpus, batch_format="numpy", zero_copy_batch=True)
            try:
                # Whole blocks as each comes back (iter_rows would gather 256 rows first): the progress,
                # and the report of an interrupted run, keep up with the files written.
                for block in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
                    for j in range(len(block["index"])):
                        yield {key: column[j] for key, column in block.items()}
            except ray.exceptions.RayError as e:
                raise OutputError(f"the Ray job failed: {worker_error(e)}") from None
        finally:
            if self.settings.started:
                ray.shutdown()


def worker_error(e: BaseException) -> str:
    """The first line that says what went wrong in an actor (its exception, not Ray's wrapping)."""
    cause = e
    while getattr(cause, "cause", None) is not None:
        cause = cause.cause
    text = str(cause).strip().splitlines()
    lines = [line for line in text if line and not line.startswith((" ", "Traceback", "File "))]
    return lines[-1] if lines else type(e).__name__
