"""Each benchmark's --quick run (`make bench-quick`) as a smoke test: run from the repository root
as `python -m benchmarks.NAME --quick`, it runs to the end on real parts, and each table it prints
is read back (benchmarks.common.read_tables): the header, and rows whose figures parse as numbers.
No figure is compared with a target or a time here: these machines are shared and noisy, and
the targets are read off the full runs (`make bench`). benchmarks/million.py --quick runs in
tests/test_million.py."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from benchmarks.common import read_tables

REPOSITORY = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.integration
PLACEHOLDERS = ("-", "n/a")   # a figure a row does not have


def run_quick(name: str, timeout: float = 900) -> str:
    """`python -m benchmarks.NAME --quick` from the repository root; its stdout (it must succeed)."""
    result = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--quick"], capture_output=True, text=True,
                            timeout=timeout, cwd=REPOSITORY, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def number(cell: str) -> float:
    """A printed figure: '12,345', '0.85', '4.3%'."""
    return float(cell.replace(",", "").removesuffix("%"))


def check_table(table: list[list[str]], header: Sequence[str], text: Sequence[str] = ()) -> list[dict[str, str]]:
    """The table's header starts with `header`; every cell of a column not named in `text` is a
    number or a placeholder ('-', 'n/a': a figure that row does not have), and some row has
    figures. Its rows as {column: cell}."""
    assert table[0][:len(header)] == list(header), table[0]
    figures = 0
    for row in table[1:]:
        for name, cell in zip(table[0], row):
            if name in text or cell in PLACEHOLDERS:
                continue
            try:
                number(cell)
            except ValueError:
                pytest.fail(f"{cell!r} is no figure, in {row} under {table[0]}")
            figures += 1
    assert figures, f"no figures under {table[0]}: {table[1:]}"
    return [dict(zip(table[0], row)) for row in table[1:]]


def tables_of(stdout: str, count: int) -> list[list[list[str]]]:
    tables = read_tables(stdout)
    assert len(tables) == count, stdout[-3000:]
    return tables


def test_quick_decode_throughput():
    stdout = run_quick("decode_throughput")
    decoder, bound, mixed = tables_of(stdout, 3)
    rows = check_table(decoder, ["mode", "batch", "rows/call", "words/s", "x seed loop", "x seed predict()",
                                 "greedy = seed (of 1)"], text=["mode"])
    assert {row["mode"] for row in rows} == {"greedy", "sampling"}
    assert all(row["greedy = seed (of 1)"] == "1" for row in rows if row["mode"] == "greedy")
    check_table(bound, ["batch", "bound words/s", "greedy /bound", "greedy ids only /bound",
                        "greedy, TF ops only /bound", "top_k 50 /bound", "top_k 50 top_p 0.9 /bound",
                        "temperature 1 /bound", "logprob cost"])
    assert len(check_table(mixed, ["batch", "prompts", "words", "uniform words/s", "mixed words/s",
                                   "mixed/uniform"])) == 2
    assert json.loads(stdout.strip().splitlines()[-1])["benchmark"] == "decode_throughput"


def test_quick_worker_overhead():
    (table,) = tables_of(run_quick("worker_overhead"), 1)
    rows = check_table(table, ["format", "chunk", "task s", "decoder s", "host us/prompt", "task words/s",
                               "decoder-only words/s", "task/decoder-only"], text=["format"])
    assert [(row["format"], row["chunk"]) for row in rows] == [("txt", "256"), ("txt", "1,024"), ("jsonl", "256"),
                                                               ("jsonl", "1,024")]


def test_quick_end_to_end():
    stdout = run_quick("end_to_end")
    (table,) = tables_of(stdout, 1)
    rows = check_table(table, ["what", "seconds", "words/s", "x seed predict()"], text=["what"])
    assert {"lstmq end to end (lstmq generate wall)", "in-process decoder, same exported model",
            "seed model.predict per word"} <= {row["what"] for row in rows}
    ratio = re.search(r"lstmq generate end to end / in-process decoder: ([\d.]+)", stdout)
    assert ratio and float(ratio.group(1)) > 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["prompts"] == 500 and summary["ratio_end_to_end_vs_in_process_decoder"] > 0


def test_quick_scale_out():
    (table,) = tables_of(run_quick("scale_out"), 1)
    rows = check_table(table, ["workers", "TF threads each", "job seconds", "words/s", "ratio to 1 worker", "target"],
                       text=["target"])
    assert [row["workers"] for row in rows] == ["1", "2"] and rows[0]["ratio to 1 worker"] == "1.00"


def test_quick_train_speed():
    stdout = run_quick("train_speed")
    equal_time, best_epochs = tables_of(stdout, 2)
    checkpoints = [f"ppl@{seconds}s" for seconds in ("0.25", "0.5", "0.75", "1", "1.25", "1.5")]
    rows = check_table(equal_time, ["variant", "steps/epoch", "epochs", "cpu/wall", *checkpoints, "best",
                                    "|grad| med", "|grad| max"], text=["variant"])
    assert [row["variant"] for row in rows][0] == "seed" and rows[1]["variant"].startswith("lstmq bs=")
    assert all(number(row[name]) > 0 for row in rows for name in checkpoints)   # every point scored
    rows = check_table(best_epochs, ["variant", "epoch s", *[f"by {name[4:]}" for name in checkpoints]],
                       text=["variant"])
    assert len(rows) == 2
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert len(summary["equal_time"]) == 2 and summary["ratios_seed_over_variant_perplexity"]
