"""Per-process state of a worker: settings, the store, the device, and a cache of loaded models.
configure() runs in the Celery main process (no TensorFlow); init_process() runs in the pool
process that executes tasks, and is the only place TensorFlow gets imported; it also serves the
worker's Prometheus metrics (worker.metrics) when metrics_port is set. Heap settling (gc.freeze
once a model is loaded or traced) is a per-process policy, here too."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import kombu.exceptions
import redis

from lstmq.shared.config import Settings
from lstmq.shared.messages import Dispatcher
from lstmq.shared.recovery import recover
from lstmq.shared.store import Store
from lstmq.worker import metrics
from lstmq.worker.jobs.leases import TRANSIENT

log = logging.getLogger("lstmq.worker")


@dataclass
class LoadedModel:
    name: str
    version: int
    decoder: Any        # worker.engine.decoder.Decoder
    meta: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"


class ModelCache:
    """Loads each model version once per process (fetched from the registry), keeps the most
    recently used `size` versions."""

    def __init__(self, store: Store, size: int, max_rows: int, native: str = "auto"):
        self.store, self.size, self.max_rows, self.native = store, size, max_rows, native
        self.models: OrderedDict[tuple[str, int], LoadedModel] = OrderedDict()
        self.lock = threading.RLock()   # the task and the watchdog (warming a promoted version) share it

    def get(self, name: str, version: int) -> LoadedModel:
        with self.lock:
            return self._get(name, version)

    def loaded(self) -> list[tuple[str, int]]:
        """The (name, version) pairs loaded now, read under the cache's lock (tasks reorder it)."""
        with self.lock:
            return list(self.models)

    def labels(self) -> list[str]:
        with self.lock:
            return [loaded.label for loaded in self.models.values()]

    def warm(self, name: str, version: int) -> LoadedModel:
        """Load a version and trace its decoder once (the call a greedy chunk makes), so the first
        chunk that needs it does not wait."""
        from lstmq.worker.engine.batching import Request

        with self.lock:
            loaded = self._get(name, version)
            params = ensure_settings().generation_params().replace(words=1, n=1, seed=0, temperature=0.0)
            with settled_if_traced(loaded.decoder):
                loaded.decoder.continuations_scored([Request(ids=[2], params=params, key=0)])
            return loaded

    def _get(self, name: str, version: int) -> LoadedModel:
        key = (name, version)
        if key in self.models:
            self.models.move_to_end(key)
            return self.models[key]
        from lstmq.worker.engine.decoder import Decoder
        from lstmq.shared.artifact import read_artifact
        from lstmq.worker.engine.network import load_keras_bytes
        from lstmq.shared.text import Vocabulary

        started = time.monotonic()
        model_bytes, vocabulary, meta = read_artifact(self.store.registry.artifact(name, version))
        decoder = Decoder(load_keras_bytes(model_bytes), Vocabulary(vocabulary), max_rows=self.max_rows, native=self.native)
        loaded = LoadedModel(name, version, decoder, meta)
        self.models[key] = loaded
        while len(self.models) > self.size:
            dropped, _ = self.models.popitem(last=False)
            log.info("dropped model %s@%s from the cache", *dropped)
        settle_heap()   # the model's objects live as long as it is cached; a dropped one's are collected
        log.info("loaded model %s (vocab %d words) in %.2fs, %s", loaded.label, len(vocabulary), time.monotonic() - started,
                 "decoding with lstmq's native kernels" if decoder.native else "decoding with TensorFlow's ops")
        return loaded


def settle_heap() -> None:
    """Collect the garbage, then move every object left to Python's permanent generation (gc.freeze),
    out of the way of its full collections: a worker holds TensorFlow's and Keras's objects (about
    400,000 with the seed's network), and each full collection scanned them all, 0.18 s on 2 cores,
    about 3 times per 100,000 prompts decoded. Run when a model was loaded or traced: what exists
    then lives as long as the model. The frozen objects are unfrozen first, so that a model dropped
    from the cache since the last call is collected."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


@contextmanager
def settled_if_traced(decoder) -> Iterator[None]:
    """settle_heap() after the block if the decoder traced new graphs in it (they live as long as
    the model)."""
    traced = decoder.tracing_count()
    yield
    if decoder.tracing_count() != traced:
        settle_heap()


class Runtime:
    settings: Settings | None = None
    name: str = "lstmq"
    device: str = "cpu"
    queues: tuple[str, ...] = ()
    store: Store | None = None
    models: ModelCache | None = None
    dispatcher: Dispatcher | None = None
    watchdog: Watchdog | None = None
    chunks_done: int = 0      # chunks this process finished (with a result)


def gpu_name(tf, gpus) -> str | None:
    """The first visible GPU's name (each worker sees one), None on a CPU worker."""
    if not gpus:
        return None
    try:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name")
    except (ValueError, RuntimeError):
        return None


def gpu_index(gpus) -> int | None:
    """The machine's index of the GPU this worker runs on (what nvidia-smi calls it; lstmq-worker
    passes it in LSTMQ_GPU_INDEX, as CUDA_VISIBLE_DEVICES makes it GPU 0 inside); None on a CPU worker."""
    if not gpus:
        return None
    given = os.environ.get("LSTMQ_GPU_INDEX", "")
    if given.isdigit():
        return int(given)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(visible) if visible.isdigit() else 0


class Watchdog(threading.Thread):
    """In the process that runs tasks: every third of lease_seconds, say that this worker is
    alive (and which queues it consumes, and when its last good pass was), take over lapsed leases
    of any active job (another worker was killed, or its machine lost) by dispatching that work
    again, fail interrupted submissions, prune the job indexes, and warm up versions an alias moved
    to. It never stops: each step of a pass that fails is logged, and the next pass tries again."""

    def __init__(self, store: Store, dispatcher: Dispatcher, settings: Settings, name: str,
                 info: Callable[[], dict[str, Any]]):
        super().__init__(daemon=True, name="lstmq-watchdog")
        self.store, self.dispatcher, self.settings, self.worker, self.info = store, dispatcher, settings, name, info
        self.stopped = threading.Event()
        self.failed: set[tuple[str, int]] = set()   # versions that would not load here
        self.last_good_pass: float | None = None    # when a pass last went through without an error

    def run(self) -> None:
        while True:
            self.run_once()
            if self.stopped.wait(self.settings.lease_seconds / 3):
                return

    def run_once(self) -> bool:
        """One pass; True when every step went through. Never raises: a Redis that is away for a
        moment is a warning, anything else (a script refused under out of memory, a bug) an error
        with its traceback."""
        good = True
        for step, action in (("heartbeat", self.heartbeat), ("recovery", self.recover),
                             ("index pruning", self.prune), ("model aliases", self.follow_aliases)):
            try:
                action()
            except (*TRANSIENT, kombu.exceptions.OperationalError) as error:
                good = False
                log.warning("watchdog: %s: Redis unreachable: %s; the next pass tries again", step, error)
            except Exception:   # noqa: BLE001 (the watchdog must outlive any one failure)
                good = False
                log.exception("watchdog: %s failed; the next pass tries again", step)
        if good:
            self.last_good_pass = time.time()
        return good

    def heartbeat(self) -> None:
        self.store.workers.heartbeat(self.worker, {**self.info(), "watchdog_last_pass": self.last_good_pass},
                                     ttl=self.settings.lease_seconds)

    def prune(self) -> None:
        self.store.jobs.prune_indexes()
        self.store.workers.prune()

    def recover(self) -> None:
        recover(self.store, self.dispatcher, self.settings.redispatch_limit, lease_seconds=self.settings.lease_seconds)

    def follow_aliases(self) -> None:
        """When an alias of a model this process serves moves, load and warm the version it now
        names before a job needs it. A version that fails to load is recorded in the registry
        (lstmq models show) and not tried again by this process; the loaded ones go on serving."""
        models = STATE.models
        if models is None:
            return
        for name in sorted({name for name, _ in models.loaded()}):
            try:
                targets = set(self.store.registry.aliases(name).values())
            except redis.exceptions.RedisError as error:
                log.warning("could not read the aliases of model %s: %s", name, error)
                continue
            for version in sorted(targets):
                if (name, version) in models.loaded() or (name, version) in self.failed:
                    continue
                try:
                    models.warm(name, version)
                    log.info("warmed up model %s@%d (an alias now names it)", name, version)
                except Exception as error:   # any load failure: the old versions keep serving
                    self.failed.add((name, version))
                    reason = f"{type(error).__name__}: {error}"
                    log.error("could not load model %s@%d: %s; the loaded versions go on serving", name, version, reason)
                    try:
                        self.store.registry.record_load_failure(name, version, self.worker, reason)
                    except redis.exceptions.RedisError as record_error:
                        log.warning("could not record the load failure: %s", record_error)


STATE = Runtime()


def configure(settings: Settings, name: str, device: str, queues: tuple[str, ...] = ()) -> None:
    STATE.settings, STATE.name, STATE.device, STATE.queues = settings, name, device, queues


def describe() -> str:
    return f"worker {STATE.name} device {STATE.device}: "


def configure_threads(tf, settings: Settings) -> list:
    """Apply the tf_threads and tf_inter_op_threads settings, before TensorFlow runs anything
    (listing the physical devices does not start it); returns the GPUs. Intra-op threads (inside
    one op): tf_threads, else TensorFlow's choice (every core). Inter-op threads (ops run side by
    side): tf_inter_op_threads; unset, 1 on a CPU worker (a decoding step is a chain of ops, each
    parallel inside: more threads only take turns on the same cores), and tf_threads or
    TensorFlow's choice on a GPU worker."""
    gpus = tf.config.list_physical_devices("GPU")
    intra = settings.tf_threads
    inter = settings.tf_inter_op_threads or (intra if gpus else 1)
    if intra:   # several workers on one machine share its cores
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    return gpus


def init_process() -> None:
    """Set up the device and the store in the process that runs tasks."""
    import tensorflow as tf

    from lstmq.worker.engine.decoder import set_process_numerics
    from lstmq.worker.engine.kernels import decoding_path

    settings = ensure_settings()
    threads = settings.tf_threads
    gpus = configure_threads(tf, settings)
    set_process_numerics()   # TF32 off, once, before any model is loaded
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
    if gpus:
        growth = all(tf.config.experimental.get_memory_growth(gpu) for gpu in gpus)
        detail = f"{len(gpus)} GPU(s), CUDA_VISIBLE_DEVICES={visible}, memory growth {'on' if growth else 'off'}"
    else:
        detail = f"CPU only, CUDA_VISIBLE_DEVICES={visible}"
    rows = settings.decode_batch_size_gpu if gpus else settings.decode_batch_size
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    detail += (f", {threads} TensorFlow thread(s)" if threads else ", TensorFlow's own thread count") + \
        (f" ({inter} inter-op)" if inter else "") + \
        f", decoding {rows} rows per call"
    decoding, decoding_why = decoding_path(settings.native_kernels, on_gpu=bool(gpus))
    detail += f", decoding with {decoding_why}"
    STATE.store = Store.from_settings(settings)
    STATE.models = ModelCache(STATE.store, settings.model_cache_size, rows, settings.native_kernels)
    STATE.dispatcher = Dispatcher(settings)
    fixed = {"host": socket.gethostname(), "pid": os.getpid(), "device": STATE.device, "queues": list(STATE.queues),
             "gpu_index": gpu_index(gpus), "gpu_name": gpu_name(tf, gpus), "tensorflow": tf.__version__, "started": time.time(),
             "watchdog_interval": settings.lease_seconds / 3, "decoding": decoding, "decoding_detail": decoding_why}

    def info() -> dict[str, Any]:   # what `lstmq workers` shows, renewed with every heartbeat
        return {**fixed, "models": STATE.models.labels() if STATE.models else [], "chunks_done": STATE.chunks_done}

    STATE.watchdog = Watchdog(STATE.store, STATE.dispatcher, settings, STATE.name, info)
    STATE.watchdog.start()
    metrics.setup(STATE.device, lambda: len(STATE.models.loaded()) if STATE.models else 0, decoding)
    if settings.metrics_port:   # this process counts, so this process serves (metrics_port + i on GPU i)
        metrics.serve(settings.metrics_port)
    log.info("ready: TensorFlow %s, %s, pid %d", tf.__version__, detail, os.getpid())


_MAIN_STORE: Store | None = None


def main_store() -> Store:
    """A store for the Celery main process (the pool process has STATE.store), made on first use."""
    global _MAIN_STORE
    if _MAIN_STORE is None:
        _MAIN_STORE = Store.from_settings(ensure_settings())
    return _MAIN_STORE


def ensure_settings() -> Settings:
    if STATE.settings is None:
        from lstmq.shared.config import load_settings
        STATE.settings = load_settings()
    return STATE.settings


def process() -> Runtime:
    """This process's runtime, set up on first use (the pool process sets it up at start)."""
    if STATE.store is None or STATE.models is None:
        init_process()
    return STATE
