"""`make demo`: the main job end to end on this machine.

Starts a throwaway redis-server on a free port (unless LSTMQ_BROKER_URL or --broker names one),
one lstmq-worker (CPU, or one per visible GPU), trains a model on the demo corpus for a few
epochs, generates continuations for examples/seeds.txt into demo-out.jsonl, prints a few lines,
and stops everything it started, also on Ctrl-C or failure.

Corpus: $CORPUS, else $LSTMQ_TEST_CORPUS or ../shared/data/sherlock.txt beside the checkout, else the same text
downloaded from its public origin with its sha256 checked.

Run from a checkout (`make demo`, or `python -m examples.demo`): the throwaway redis-server and
the local stack are development plumbing (tests/devstack.py), not part of the installed package."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.devstack import REPOSITORY, LocalStack, corpus_path, tool

CORPUS_URL = "https://sherlock-holm.es/stories/plain-text/advs.txt"
CORPUS_SHA256 = "9ac008014241e665aa5669e74d5b9aecc3ad17a812c79be01522ec35f1ab4a79"


def find_corpus() -> Path:
    if os.environ.get("CORPUS"):
        return Path(os.environ["CORPUS"])
    default = corpus_path()
    if default.exists():
        return default
    print(f"demo: {default} not found; downloading {CORPUS_URL}", flush=True)
    return fetch_corpus(CORPUS_URL, CORPUS_SHA256)


def fetch_corpus(url: str, sha256: str, cache_dir: str | None = None) -> Path:
    """Download once into the cache folder (default ~/.cache/lstmq/demo), checking the pinned
    sha256; ValueError (and nothing kept) when the download's hash is another. Standard library
    only: the demo needs no TensorFlow on the machine that runs it."""
    directory = Path(cache_dir) if cache_dir else Path.home() / ".cache" / "lstmq" / "demo"
    target = directory / f"lstmq-corpus-{sha256[:12]}.txt"
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == sha256:
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=60) as response:   # noqa: S310 (a pinned, checked file)
        data = response.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise ValueError(f"{url}: sha256 hash {digest} is not the pinned {sha256}; nothing was kept")
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("EPOCHS", 5)))
    parser.add_argument("--seeds", default=str(REPOSITORY / "examples" / "seeds.txt"))
    parser.add_argument("--output", default="demo-out.jsonl")
    parser.add_argument("--broker", default=os.environ.get("LSTMQ_BROKER_URL"))
    parser.add_argument("--worker-log", default="demo-worker.log", help="where the worker's log goes")
    args = parser.parse_args(argv)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run the clean-up below on SIGTERM too
    corpus = find_corpus()
    try:
        with LocalStack(args.worker_log, args.broker) as stack:
            if stack.server is not None:
                print(f"demo: started redis-server on {stack.broker}", flush=True)
            print(f"demo: started lstmq-worker (log: {args.worker_log})", flush=True)
            common = ["--broker", stack.broker]
            try:
                subprocess.run([tool("lstmq"), "train", str(corpus), "--model", "demo", "--epochs", str(args.epochs),
                                "--wait", *common], check=True)
                result = subprocess.run([tool("lstmq"), "generate", args.seeds, "--model", "demo", "-o", args.output,
                                         *common])
                if result.returncode not in (0, 3):
                    raise subprocess.CalledProcessError(result.returncode, result.args)
            except subprocess.CalledProcessError as error:
                print(f"demo: {' '.join(map(str, error.cmd[:2]))} failed with status {error.returncode}; "
                      f"the worker's log ends:\n{stack.log_tail()}", file=sys.stderr)
                return 1
        print(f"\ndemo: first lines of {args.output}:")
        with open(args.output, encoding="utf-8") as stream:
            for line, _ in zip(stream, range(5)):
                record = json.loads(line)
                print(f"  [{record['model']}] {record['prompt']} -> {record['continuation']}")
        print(f"\ndemo: done in {time.monotonic() - started:.0f}s")
        return 0
    except KeyboardInterrupt:
        print("\ndemo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
