"""What a user's fresh venv gets from `pip install lstmq`: one import namespace, `lstmq`, and the
two console scripts; nothing generic (`config`, `shared`, `worker`, `producer`) at the top level."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTHING_GENERIC = ("import importlib, lstmq, lstmq.shared.errors, lstmq.config\n"
                   "for name in ('shared', 'worker', 'producer', 'config'):\n"
                   "    try:\n"
                   "        importlib.import_module(name)\n"
                   "    except ImportError:\n"
                   "        continue\n"
                   "    raise SystemExit(f'{name} is importable')\n")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds, from a copy of the sources (the build leaves files behind in its tree)."""
    source = tmp_path_factory.mktemp("source") / "lstmq"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                                  ".pytest_cache"))
    directory = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(directory),
                    str(source)], check=True, capture_output=True, text=True, timeout=300)
    return next(directory.glob("lstmq-*.whl"))


def test_the_wheel_holds_only_the_lstmq_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"lstmq"}
    for module in ("lstmq/__init__.py", "lstmq/shared/messages.py", "lstmq/shared/store/keys.py",
                   "lstmq/shared/artifact.py", "lstmq/worker/app.py", "lstmq/worker/jobs/chunks.py",
                   "lstmq/worker/engine/decoder.py", "lstmq/worker/engine/kernels/next_word.cc",
                   "lstmq/producer/cli.py", "lstmq/config/default.yaml"):
        assert module in names
    # development plumbing stays in the checkout: no tests, benchmarks, demo or throwaway redis-server
    assert not [name for name in names if name.startswith(("lstmq/tests", "lstmq/benchmarks", "lstmq/examples"))
                or name.endswith(("devstack.py", "demo.py", "oracle.py"))]


def test_a_fresh_venv_imports_lstmq_and_nothing_generic(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    # the wheel alone (--no-deps): imports that need no third-party package still work
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    installed = {path.name for path in site.iterdir()} - {"__pycache__"}
    assert {name for name in installed if not name.endswith(".dist-info")} == {"lstmq"}
    assert (venv / "bin" / "lstmq").exists() and (venv / "bin" / "lstmq-worker").exists()
    code = NOTHING_GENERIC + "assert lstmq.__version__ != '0+unknown', lstmq.__version__\n"
    outside = tmp_path / "elsewhere"   # not the checkout: its folders are not on sys.path
    outside.mkdir()
    result = subprocess.run([str(python), "-c", code], cwd=outside, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_development_venv_exposes_only_lstmq_too(tmp_path):
    """The editable install (make setup) maps lstmq.* onto the folders; from elsewhere, the
    folders' own names are not importable."""
    code = "import lstmq.shared.store, lstmq.worker.app, lstmq.producer.cli\n" + NOTHING_GENERIC
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
