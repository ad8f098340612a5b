"""lstmq's native CPU kernels for a decoding step (next_word.cc), built on first use.

TensorFlow's CPU ops take one pass over the (rows x vocabulary) logits in memory for each of the
maximum, the argmax and the log-sum-exp, and its argmax is not vectorized; the fused kernel
LstmqBestWord does all of it per row while the row is in cache; LstmqDenseBest does it while the
logits are computed, never writing them out; LstmqLstmStep does an LSTM step, its matmuls
included, in one pass instead of a dozen ops; all with a fixed arithmetic per row, whatever the
batch (see next_word.cc). They are built with the C++ compiler against the installed
TensorFlow's headers (tf.sysconfig) the first time a CPU decoder needs it, into a cache folder
keyed by the source, TensorFlow's version and flags, the compiler and the CPU, so later processes
load it at once:

    $LSTMQ_KERNEL_CACHE, else $XDG_CACHE_HOME/lstmq/kernels, else ~/.cache/lstmq/kernels

The cache holds code this process will load and run, so it must be nobody else's: the folder is
created 0700, and a folder or library that another user owns, or that others may write to, is
refused with a message naming it (safe_path).

The `native_kernels` setting says what happens when it cannot be built (no compiler, a refused
cache, say): `auto` falls back to TensorFlow's ops (same words, same log-probabilities within
float32 rounding) with a warning; `on` makes it an error; `off` never builds it. Worker side only:
imports TensorFlow.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("next_word.cc")
CACHE_ENV = "LSTMQ_KERNEL_CACHE"
COMPILER_ENV = "CXX"
BUILD_TIMEOUT = 600   # seconds: TensorFlow's headers are large; about 6 s on 2 cores
OPTIMIZATION = ["-O3", "-march=native", "-fopenmp-simd", "-fPIC", "-shared", "-fvisibility=hidden", "-w"]

_lock = threading.Lock()
_loaded: dict[str, Any] = {}


class KernelUnavailable(RuntimeError):
    """The native kernel could not be built or loaded; the message says why."""


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lstmq" / "kernels"


def safe_path(path: Path, what: str) -> None:
    """Raise KernelUnavailable unless `path` belongs to this process's user and no one else may
    write to it (no group or world write bit): the cache holds code this process loads."""
    info = path.stat()
    if info.st_uid != os.geteuid():
        raise KernelUnavailable(f"{what} {path} belongs to uid {info.st_uid}, not to this user (uid "
                                f"{os.geteuid()}): refusing to load code from it (set {CACHE_ENV} to a folder of yours)")
    if info.st_mode & 0o022:
        raise KernelUnavailable(f"{what} {path} may be written by others (mode {info.st_mode & 0o777:o}): refusing to "
                                f"load code from it (chmod go-w it, or set {CACHE_ENV} to a folder of yours)")


def _cpu_flags() -> str:
    """The CPU's feature flags (-march=native builds for them: a cache shared between machines
    must not hand one machine's build to another)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> str:
    for candidate in (os.environ.get(COMPILER_ENV), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return candidate
    raise KernelUnavailable("no C++ compiler found (set CXX, or install g++)")


def build(tf) -> Path:
    """The path of the kernel library for this TensorFlow, compiler and CPU, building it if the
    cache has none. Raises KernelUnavailable with the compiler's message when the build fails."""
    compiler = _compiler()
    compile_flags, link_flags = list(tf.sysconfig.get_compile_flags()), list(tf.sysconfig.get_link_flags())
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError) as error:
        raise KernelUnavailable(f"{compiler} --version failed: {error}") from None
    flags = ["-std=c++17", *OPTIMIZATION]
    key = hashlib.sha256("\0".join([SOURCE.read_text(encoding="utf-8"), tf.__version__, *compile_flags, *link_flags,
                                    *flags, compiler, version, platform.machine(), _cpu_flags()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"next_word-{key}.so"
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:   # a read-only file system, say
        raise KernelUnavailable(f"cannot create the kernel cache {target.parent}: {error}") from None
    safe_path(target.parent, "the kernel cache")
    if target.exists():
        safe_path(target, "the kernel library")
        return target
    try:
        # one build per machine: processes starting together (lstmq-worker --workers N) wait for it
        with open(target.with_suffix(".lock"), "a") as lock:
            _lock_file(lock)
            if target.exists():
                return target
            _compile(compiler, flags, compile_flags, link_flags, target)
    except OSError as error:   # a read-only or full cache, say
        raise KernelUnavailable(f"cannot build into the kernel cache {target.parent}: {error}") from None
    log.info("built the native decoding kernel %s", target)
    return target


def _lock_file(handle) -> None:
    try:
        import fcntl
    except ImportError:   # not Unix: builds may run side by side (each renames a whole file into place)
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)


def _compile(compiler: str, flags: list[str], compile_flags: list[str], link_flags: list[str], target: Path) -> None:
    # a unique temporary name, renamed into place: a reader never sees half a file
    handle, temporary = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp.so", dir=target.parent)
    os.close(handle)
    command = [compiler, *flags, str(SOURCE), "-o", temporary, *compile_flags, *link_flags]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
        if result.returncode != 0:
            raise KernelUnavailable(f"building {SOURCE.name} failed (exit {result.returncode}): "
                                    f"{(result.stderr or result.stdout).strip()[-2000:]}")
        os.replace(temporary, target)
    except subprocess.TimeoutExpired:
        raise KernelUnavailable(f"building {SOURCE.name} took over {BUILD_TIMEOUT} s") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def load() -> Any:
    """The loaded op module, built if needed; raises KernelUnavailable."""
    with _lock:
        if "module" in _loaded:
            return _loaded["module"]
        if "error" in _loaded:
            raise KernelUnavailable(_loaded["error"])
        import tensorflow as tf

        try:
            path = build(tf)
            try:
                module = tf.load_op_library(str(path))
            except Exception as error:   # a stale or foreign library: rebuild once
                try:
                    path.unlink(missing_ok=True)
                except OSError as unlink_error:
                    raise KernelUnavailable(f"loading {path} failed ({error}), and it cannot be removed: "
                                            f"{unlink_error}") from None
                try:
                    module = tf.load_op_library(str(build(tf)))
                except KernelUnavailable:
                    raise
                except Exception as second:
                    raise KernelUnavailable(f"loading {path} failed: {error}; after a rebuild: {second}") from None
        except KernelUnavailable as error:
            _loaded["error"] = str(error)
            raise
        _loaded["module"] = module
        return module


def decoding_path(native: str, on_gpu: bool) -> tuple[str, str]:
    """How a decoder of this process picks its words, as (kind, why): ("native", "lstmq's native
    kernels") or ("tensorflow", the reason). Builds or loads the kernels when it must know; never
    raises (with native_kernels `on` and no kernels, decoding itself fails, with this reason)."""
    if on_gpu:
        return "tensorflow", "TensorFlow's ops on the GPU (the native kernels are CPU code)"
    if native == "off":
        return "tensorflow", "TensorFlow's ops (native_kernels: off)"
    try:
        load()
    except KernelUnavailable as error:
        if native == "on":
            return "unavailable", f"native_kernels is on but the kernels are unavailable: {error}"
        return "tensorflow", f"TensorFlow's ops (native kernels unavailable: {error})"
    return "native", "lstmq's native kernels"


def pack_matrix(matrix, width: int):
    """A [inputs, outputs] matrix in the tile layout of LstmqLstmStep and LstmqDenseBest: panels of
    `width` output columns (LstmqPanelWidth), each [inputs, width] contiguous, the last padded
    with zero columns; array [panels, inputs, width]."""
    import numpy as np

    inputs, outputs = matrix.shape
    panels = -(-outputs // width)
    full = np.zeros((inputs, panels * width), np.float32)
    full[:, :outputs] = matrix
    return np.ascontiguousarray(full.reshape(inputs, panels, width).transpose(1, 0, 2))


def pack_panels(kernel, bias, special: int, width: int):
    """The output layer's kernel [units, vocabulary] and bias in LstmqDenseBest's layout: columns
    ordered real words (ids >= special), then the `special` tokens, then padding to whole panels
    (kernel 0, bias -80: exp(-80) = 2e-35 is nothing beside the bounded logits' exp >= exp(-60),
    and LstmqDenseBest never chooses a padding column); pack_matrix of the kernel with the bias as
    one more row, [panels, units + 1, width]."""
    import numpy as np

    units, vocabulary = kernel.shape
    order = np.r_[np.arange(special, vocabulary), np.arange(special)]
    packed = pack_matrix(np.concatenate([kernel[:, order], bias[None, order]]), width)
    packed[-1, units, vocabulary - (len(packed) - 1) * width:] = -80.0   # the padding, all in the last panel
    return packed


def native_ops(mode: str = "auto") -> Any:
    """The loaded module (ops lstmq_best_word, lstmq_dense_best, lstmq_dense_sample, lstmq_lstm_step, lstmq_sample,
    lstmq_panel_width) for a CPU decoder, or None when the kernels are off or (mode `auto`) cannot
    be built. `mode`: the native_kernels setting, auto | on | off; `on` raises KernelUnavailable
    instead of falling back."""
    if mode == "off":
        return None
    try:
        return load()
    except KernelUnavailable as error:
        if mode == "on":
            raise
        log.warning("native decoding kernels unavailable, decoding with TensorFlow's ops instead: %s", error)
        return None
