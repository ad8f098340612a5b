"""What the benchmarks share: their arguments, the corpus and its prompts, timing, child processes
(the lstmq CLI, a benchmark's own --child runs), memory figures, output checks and the tables they
print (with `read_tables`, which reads them back: tests/test_benchmarks.py), and the seed
notebook's network. Run every benchmark from the repository root: `python -m benchmarks.NAME`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import devstack

REPOSITORY = Path(__file__).resolve().parents[1]

# The seed notebook's network, context and batch (also lstmq's default network size).
EMBEDDING_DIM = 100
LSTM_UNITS = 150
SEED_CONTEXT = 17            # tokens of context the seed pre-padded every example (and prompt) to
SEED_BATCH_SIZE = 32         # keras fit()'s default, which the seed used
RANDOM_SEED = 1234           # weights, the choice of prompts, shuffles
KIB = 1024
MIB = 1024 * 1024
WORKER_READY_TIMEOUT_S = 300


class StepFailed(Exception):
    """A step of a benchmark failed (a command, a check): the benchmark says why and exits 1."""


# --- arguments ------------------------------------------------------------------------------------
def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of the benchmark's docstring, its usage line
    `python -m benchmarks.NAME` (how a benchmark runs)."""
    script = Path(sys.argv[0])
    prog = f"python -m benchmarks.{script.stem}" if script.parent == Path(__file__).parent else None
    return argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0])


def add_quick(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--quick", action="store_true", help=f"a smoke run (make bench-quick, the tests): {what}")


def add_prompts(parser: argparse.ArgumentParser, default: int, help: str | None = None) -> None:
    parser.add_argument("--prompts", type=int, default=default, help=help or f"prompts (default {default:,})")


def add_words(parser: argparse.ArgumentParser, default: int = 7) -> None:
    parser.add_argument("--words", type=int, default=default,
                        help=f"words generated per prompt (default {default}{', as the seed' if default == 7 else ''})")


def add_repeats(parser: argparse.ArgumentParser, default: int, what: str = "timings per measurement") -> None:
    parser.add_argument("--repeats", type=int, default=default,
                        help=f"{what}, the fastest is kept (default {default}; the machine is noisy)")


def add_chunk_size(parser: argparse.ArgumentParser, default: int | None = None) -> None:
    parser.add_argument("--chunk-size", type=int, default=default,
                        help=f"prompts per generate task, lstmq generate --chunk-size "
                             f"(default {default if default else 'the chunk_size setting'})")


def add_worker_log(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--worker-log", help="where the worker's log goes (default: a temporary file, removed at the end)")


def int_list(text: str | Sequence[int]) -> list[int]:
    """'1,32,256' -> [1, 32, 256] ('' -> [])."""
    if not isinstance(text, str):
        return [int(value) for value in text]
    return [int(value) for value in text.split(",") if value.strip()]


def parse(parser: argparse.ArgumentParser, quick: dict[str, Any] | None = None, lists: Sequence[str] = (),
          positive: Sequence[str] = (), argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line; with --quick, the `quick` values replace the options they name;
    the `lists` options become lists of integers (comma-separated); each of the `positive` options
    must be >= 1 (a list: not empty, every value >= 1)."""
    arguments = parser.parse_args(argv)
    if quick and getattr(arguments, "quick", False):
        for name, value in quick.items():
            setattr(arguments, name, value)
    for name in lists:
        setattr(arguments, name, int_list(getattr(arguments, name)))
    for name in positive:
        value = getattr(arguments, name)
        if (not value or min(value) < 1) if isinstance(value, list) else value < 1:
            parser.error(f"--{name.replace('_', '-')} must be {'positive integers' if isinstance(value, list) else '>= 1'}")
    return arguments


# --- the corpus -----------------------------------------------------------------------------------
def corpus_text(lines: int = 0) -> str:
    """The development corpus ($LSTMQ_TEST_CORPUS, tests/devstack.py), its first `lines` lines
    or all of it (0)."""
    text = devstack.corpus_path().read_text(encoding="utf-8")
    return "\n".join(text.split("\n")[:lines]) if lines else text


def corpus_prompts(text: str, count: int, words: tuple[int, int] = (5, 15), seed: int = RANDOM_SEED) -> list[str]:
    """`count` random corpus lines of words[0] to words[1] words, stripped, drawn with replacement."""
    import numpy as np

    from lstmq.shared.text import words as split_words

    lines = [line.strip() for line in text.split("\n") if words[0] <= len(split_words(line)) <= words[1]]
    rng = np.random.default_rng(seed)
    return [lines[index] for index in rng.integers(0, len(lines), size=count)]


def write_lines(path: Path, lines: Sequence[str]) -> Path:
    """A seed file: one line each."""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# --- timing ---------------------------------------------------------------------------------------
def fastest(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """(seconds of the fastest of `repeats` calls, the last call's result)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def interleaved_fastest(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Seconds of the fastest of `repeats` calls of each run, the runs interleaved (a noisy
    machine's slow spells fall on all of them alike)."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


# --- child processes ------------------------------------------------------------------------------
def child_environment(**extra: str) -> dict[str, str]:
    """This process's environment, TensorFlow's start-up logs quiet unless asked for."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"), **extra}


@dataclass
class Completed:
    """A finished command: wall seconds, stdout and stderr."""
    seconds: float
    stdout: str
    stderr: str

    def json(self) -> Any:
        """Its last stdout line, parsed (what `lstmq ... --json` prints)."""
        lines = self.stdout.strip().splitlines()
        if not lines:
            raise StepFailed(f"the command printed nothing on stdout:\n{self.stderr[-3000:]}")
        return json.loads(lines[-1])


def lstmq(*arguments: Any, broker: str | None = None, ok: Sequence[int] = (0,), timeout: float | None = None) -> Completed:
    """Run the lstmq CLI (`--broker` added where given); StepFailed unless it exits with one of `ok`."""
    command = [devstack.tool("lstmq"), *map(str, arguments), *(["--broker", broker] if broker else [])]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=child_environment(), timeout=timeout,
                            stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    if result.returncode not in ok:
        raise StepFailed(f"`lstmq {' '.join(map(str, arguments[:2]))}` exited with status {result.returncode}:\n"
                         f"{result.stderr.strip()[-3000:]}")
    return Completed(seconds, result.stdout, result.stderr)


def run_child(module: str, *arguments: Any) -> dict[str, Any]:
    """`python -m MODULE ARGUMENTS` from the repository root (a benchmark's --child run, in a
    process of its own so that its memory is its own): the last JSON object it printed."""
    completed = subprocess.run([sys.executable, "-m", module, *map(str, arguments)], capture_output=True, text=True,
                               env=child_environment(), cwd=REPOSITORY)
    reports = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not reports:
        sys.stderr.write(completed.stderr[-4000:])
        raise SystemExit(f"{module} {' '.join(map(str, arguments))}: the child failed with exit status "
                         f"{completed.returncode}")
    return json.loads(reports[-1])


def wait_for_worker(worker: subprocess.Popen, log: Path, pattern: str = r"ready: TensorFlow",
                    timeout: float = WORKER_READY_TIMEOUT_S) -> float:
    """Seconds until the worker's log matches `pattern` (its pool process imported TensorFlow)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if worker.poll() is not None:
            raise StepFailed(f"lstmq-worker exited with status {worker.returncode} before it was ready")
        if re.search(pattern, log.read_text(encoding="utf-8", errors="replace")):
            return time.monotonic() - started
        time.sleep(0.2)
    raise StepFailed(f"lstmq-worker was not ready after {timeout:.0f}s")


@contextlib.contextmanager
def reported(name: str, stack: devstack.LocalStack | None = None) -> Iterator[None]:
    """Around a benchmark's run: SIGTERM exits as Ctrl-C does; a StepFailed is printed (with the end
    of the worker's log) and exits 1, Ctrl-C exits 130; the stack is stopped whatever happened."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the clean-up on SIGTERM too
    try:
        yield
    except StepFailed as error:
        tail = f"\n{name}: the worker's log ends:\n{stack.log_tail()}" if stack and stack.log else ""
        print(f"{name}: {error}{tail}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(f"\n{name}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if stack is not None:
            stack.__exit__()


# --- memory ---------------------------------------------------------------------------------------
def proc_kib(field_name: str, path: str = "/proc/self/status") -> int | None:
    """A 'Name:  N kB' field of /proc/self/status (VmRSS, VmHWM) or /proc/meminfo, in KiB."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return None


def current_rss_mib() -> float:
    """This process's resident memory now (MiB)."""
    kib = proc_kib("VmRSS")
    return float("nan") if kib is None else kib / KIB


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the
    parent that forked it, so a child's figure is its own)."""
    kib = proc_kib("VmHWM")
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss if kib is None else kib) / KIB


def available_memory_bytes() -> int:
    return (proc_kib("MemAvailable", "/proc/meminfo") or 0) * KIB


# --- output checks --------------------------------------------------------------------------------
@dataclass
class Output:
    lines: int = 0
    raw_bytes: int = 0                                   # UTF-8 bytes of the prompts and continuations
    records: list[dict[str, Any]] = field(default_factory=list)   # with keep=True


def check_output(path: Path, expected: int, prompts: Sequence[str] | None = None, keep: bool = False) -> Output:
    """An `lstmq generate` OUT, read line by line: `expected` lines, ids 1..N in input order
    (and the prompts as written, where given); StepFailed otherwise."""
    output = Output()
    with path.open(encoding="utf-8") as stream:
        for number, line in enumerate(stream, start=1):
            record = json.loads(line)
            if record["id"] != number:
                raise StepFailed(f"{path.name}: line {number} has id {record['id']!r}, expected {number}")
            if prompts is not None and number <= len(prompts) and record["prompt"] != prompts[number - 1]:
                raise StepFailed(f"{path.name}: line {number} has prompt {record['prompt']!r}, "
                                 f"expected {prompts[number - 1]!r}")
            output.lines = number
            output.raw_bytes += len(record["prompt"].encode()) + len(record["continuation"].encode())
            if keep:
                output.records.append(record)
    if output.lines != expected:
        raise StepFailed(f"{path.name}: {output.lines} lines, expected {expected}")
    return output


# --- tables ---------------------------------------------------------------------------------------
def print_table(rows: Sequence[Sequence[str]], left: int = 0) -> None:
    """Columns two spaces apart, the first `left` of them left-aligned, the others right-aligned;
    the first row is the header, underlined with dashes (read_tables reads it back)."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    print()
    for number, row in enumerate(rows):
        print("  ".join(cell.ljust(width) if column < left else cell.rjust(width)
                        for column, (cell, width) in enumerate(zip(row, widths))))
        if number == 0:
            print("  ".join("-" * width for width in widths))


def read_tables(text: str) -> list[list[list[str]]]:
    """Every table print_table printed in `text`: [header, row, ...] each, cells stripped. A table
    is a header line, a line of dash runs two spaces apart (one per column) of the same length,
    and the lines of that length after it."""
    lines = text.splitlines()
    tables = []
    for number in range(1, len(lines)):
        rule = lines[number]
        if not re.fullmatch(r"-+(  -+)*", rule) or len(lines[number - 1]) != len(rule):
            continue
        spans = [match.span() for match in re.finditer(r"-+", rule)]
        table = [[lines[number - 1][start:end].strip() for start, end in spans]]
        for line in lines[number + 1:]:
            if len(line) != len(rule):
                break
            table.append([line[start:end].strip() for start, end in spans])
        tables.append(table)
    return tables


# --- the seed notebook's network ------------------------------------------------------------------
def seed_model(total_words: int, context: int = SEED_CONTEXT, embedding_dim: int = EMBEDDING_DIM,
               lstm_units: int = LSTM_UNITS, loss: Any = "categorical_crossentropy",
               metrics: Sequence[str] | None = ("accuracy",)):
    """The seed notebook's network as it built it: Sequential Embedding -> LSTM -> Dense(softmax)
    over `context` pre-padded tokens, categorical cross-entropy, Adam (train_memory, train_speed)."""
    import keras

    model = keras.Sequential([
        keras.Input(shape=(context,)),
        keras.layers.Embedding(total_words, embedding_dim),
        keras.layers.LSTM(lstm_units),
        keras.layers.Dense(total_words, activation="softmax"),
    ])
    model.compile(loss=loss, optimizer="adam", metrics=list(metrics) if metrics else None)
    return model


def seed_sequences(text: str, vocabulary, context: int = SEED_CONTEXT):
    """The seed's examples: every prefix of two or more tokens of every line, pre-padded to
    `context` tokens + the label (int32)."""
    import keras
    import numpy as np

    examples = []
    for line in text.split("\n"):
        ids, _ = vocabulary.encode(line)
        examples.extend(ids[:end] for end in range(2, len(ids) + 1))
    return np.array(keras.utils.pad_sequences(examples, maxlen=context + 1, padding="pre"), np.int32)
