"""Wait for jobs (progress drawn by producer.render), and write a generate job's results as JSONL:
one line per prompt and sample, in input order, written to a temporary file and renamed
(re-runnable). OUT.errors.jsonl is written by write_errors alone, the same way."""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from lstmq.producer.render import GenerateProgress, TrainProgress, note
from lstmq.shared.params import GenerationParams
from lstmq.shared.store import JobKind, JobRecord, JobStatus, Store

NO_WORKER_HINT_S = 15.0
OUTPUT_PARAMS = tuple(key for key in GenerationParams.keys() if key != "seed")   # the seed has its own field


def errors_path(out: str | Path) -> Path:
    """OUT.jsonl -> OUT.errors.jsonl"""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{stem}.errors.jsonl")


def wait(store: Store, job_id: str, poll: float, show: bool, log: TextIO = sys.stderr) -> JobRecord:
    """Poll the job until it reaches a final state, drawing its progress; say so when it stays
    queued (no worker consuming its queue)."""
    record = store.jobs.get(job_id)
    progress = (TrainProgress(record, show, log) if record.kind is JobKind.TRAIN
                else GenerateProgress(record, show, time.monotonic))
    started, hinted = time.monotonic(), False
    try:
        while True:
            record = store.jobs.get(job_id)
            progress.update(record)
            if record.status.finished:
                return record
            if not hinted and record.status is JobStatus.QUEUED and time.monotonic() - started > NO_WORKER_HINT_S:
                hinted = True
                note(f"lstmq: job {record.id} is still queued: is an lstmq-worker consuming the "
                     f"'{record.kind.value}' queue on this broker?")
            time.sleep(poll)
    finally:
        progress.close()


def write_results(store: Store, job_id: str, out: str | Path) -> tuple[int, list[dict[str, Any]]]:
    """Write OUT.jsonl (and OUT.errors.jsonl when any line or prompt failed). Returns
    (lines written, error records)."""
    record = store.jobs.get(job_id)
    failed_chunks = store.jobs.failed_chunks(job_id)
    errors = list(store.jobs.input_errors(job_id))
    out = Path(out)
    written = 0
    with _atomic(out) as stream:
        for chunk in range(record.chunks):
            items = store.jobs.chunk(job_id, chunk)
            results = store.jobs.result(job_id, chunk)
            if results is None:
                reason = failed_chunks.get(chunk, "no result (the job has not finished)")
                errors.extend({"id": item["id"], "line": item["line"], "error": f"generation failed: {reason}"}
                              for item in items)
                continue
            for item, result in zip(items, results):
                if "error" in result:
                    errors.append({"id": item["id"], "line": item["line"], "error": result["error"]})
                    continue
                params = item["params"]
                for sample, continuation in enumerate(result["samples"]):
                    stream.write(json.dumps({
                        "id": item["id"], "prompt": item["prompt"], "continuation": continuation, "model": record.model,
                        "seed": params["seed"], "sample": sample,
                        "params": {key: params[key] for key in OUTPUT_PARAMS},
                        "unknown_words": result["unknown"],
                    }, ensure_ascii=False) + "\n")
                    written += 1
    errors.sort(key=lambda error: error["line"])
    write_errors(out, errors)
    return written, errors


def write_errors(out: str | Path, errors: Iterable[dict[str, Any]]) -> Path | None:
    """OUT.errors.jsonl, one {"id", "line", "error"} per line, written atomically; with no
    errors, a stale file from an earlier run of the same output is removed. Returns its path."""
    target = errors_path(out)
    errors = list(errors)
    if not errors:
        target.unlink(missing_ok=True)
        return None
    with _atomic(target) as stream:
        for error in errors:
            stream.write(json.dumps(error, ensure_ascii=False) + "\n")
    return target


class _atomic:
    """Write to OUT.partial-PID, rename onto OUT on success, remove it on failure."""

    def __init__(self, path: Path):
        self.path = path
        self.temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")

    def __enter__(self) -> TextIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = self.temporary.open("w", encoding="utf-8")
        return self.stream

    def __exit__(self, exc_type, *_):
        self.stream.close()
        if exc_type is None:
            os.replace(self.temporary, self.path)
        else:
            self.temporary.unlink(missing_ok=True)
