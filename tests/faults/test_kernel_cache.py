"""The native kernel cache is never someone else's code: a cache folder or library that another
user owns, or that others may write to, is refused with a message naming it; `auto` then decodes
with TensorFlow's ops, `on` says why. A worker started on such a cache says so in `lstmq workers`,
and its jobs complete."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import WorkerProcess, read_jsonl
from tests.test_kernels import FALLBACK
from tests.faults.faultkit import Stack, seeds_file, write_config

pytestmark = pytest.mark.integration
NOBODY = 65534



def probe(cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", FALLBACK], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LSTMQ_KERNEL_CACHE": str(cache), "TF_CPP_MIN_LOG_LEVEL": "3"})


@pytest.fixture(scope="module")
def built_library() -> Path:
    """The kernel library as this machine builds it (the default cache; built once, if need be)."""
    script = "import tensorflow as tf\nfrom lstmq.worker.engine.kernels import build\nprint(build(tf))\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if result.returncode != 0:
        pytest.skip(f"the native kernels cannot be built here: {result.stderr[-500:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def test_a_new_cache_folder_is_private(tmp_path, built_library):
    cache = tmp_path / "new" / "cache"
    result = probe(cache)
    assert result.returncode == 0, result.stderr
    assert (cache.stat().st_mode & 0o777) == 0o700
    assert "path: ('native', \"lstmq's native kernels\")" in result.stdout, result.stdout


@pytest.mark.parametrize("case", ["writable by others", "another user's folder", "another user's library"])
def test_a_foreign_or_open_cache_is_refused_by_name(tmp_path, built_library, case):
    if os.geteuid() != 0 and case != "writable by others":
        pytest.skip("giving a file to another user needs root")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    library = cache / built_library.name
    shutil.copy2(built_library, library)
    if case == "writable by others":
        cache.chmod(0o777)
        named, why = cache, "may be written by others"
    elif case == "another user's folder":
        os.chown(cache, NOBODY, NOBODY)
        named, why = cache, f"belongs to uid {NOBODY}"
    else:
        os.chown(library, NOBODY, NOBODY)
        named, why = library, f"belongs to uid {NOBODY}"
    result = probe(cache)
    assert result.returncode == 0, result.stderr
    assert "auto: None" in result.stdout and f"{named} {why}" in result.stdout, result.stdout
    assert f"on raised: the kernel {'cache' if named == cache else 'library'} {named} {why}" in result.stdout
    assert "path: ('tensorflow', \"TensorFlow's ops (native kernels unavailable:" in result.stdout


def test_a_worker_on_an_open_cache_decodes_with_tensorflow_and_says_why(redis_server, random_artifact, tmp_path):
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    cache.chmod(0o777)
    stack = Stack(redis_server.url, write_config(tmp_path / "settings.yaml"))
    model = stack.register(random_artifact, "open-cache")
    worker = WorkerProcess(stack.url, tmp_path / "worker.log", "--config", str(stack.config),
                           env={"LSTMQ_KERNEL_CACHE": str(cache)})
    try:
        worker.wait_ready()
        (entry,) = json.loads(stack.cli("workers", "--json").stdout)
        assert entry["decoding"] == "tensorflow" and f"{cache} may be written by others" in entry["decoding_detail"]
        assert f"decoding with TensorFlow's ops (native kernels unavailable: the kernel cache {cache}" in \
            stack.cli("workers").stdout
        out = tmp_path / "out.jsonl"
        stack.cli("generate", seeds_file(tmp_path / "seeds.txt", 20), "--model", model, "-o", out, "--words", "4")
        assert [line["id"] for line in read_jsonl(out)] == list(range(1, 21))
        assert not [path for path in cache.iterdir() if path.suffix == ".so"]   # nothing was built into it
    finally:
        worker.stop()
