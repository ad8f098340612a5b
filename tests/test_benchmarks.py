"""Each benchmark's --quick run (`make bench-quick`) as a smoke test: it runs to the end on real
parts and prints its table. No figure is checked here: these machines are shared and noisy, and
the targets are read off the full runs (`make bench`). benchmarks/million.py --quick runs in
tests/test_million.py."""
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration


@pytest.mark.parametrize("script, expected", [
    ("decode_throughput.py", ["bound words/s", "mixed/uniform"]),
    ("worker_overhead.py", ["host us/prompt", "task/decoder-only"]),
    ("end_to_end.py", ["in-process decoder, same exported model", "end to end / in-process decoder"]),
    ("scale_out.py", ["ratio to 1 worker"]),
    ("train_speed.py", []),
])
def test_the_quick_benchmark_runs_and_prints_its_table(script, expected, tmp_path):
    result = subprocess.run([sys.executable, "-m", "benchmarks." + script[:-3], "--quick"], capture_output=True,
                            text=True, timeout=900, cwd=REPOSITORY, env={**__import__("os").environ,
                                                                      "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for text in expected:
        assert text in result.stdout, result.stdout[-3000:]
