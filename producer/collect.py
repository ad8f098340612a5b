"""Wait for jobs with a progress bar, and write a generate job's results as JSONL: one line per
prompt and sample, in input order, written to a temporary file and renamed (re-runnable)."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from lstmq.shared.store import JobStatus, Store

NO_WORKER_HINT_S = 15.0


def _bar_options(show: bool) -> dict[str, Any]:
    """tqdm options: follow the terminal's width, or 100 columns where it reports none (a pty)."""
    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        columns = 0
    return {"disable": not show, "file": sys.stderr, "dynamic_ncols": columns > 0, "ncols": None if columns else 100}


def errors_path(out: str | Path) -> Path:
    """OUT.jsonl -> OUT.errors.jsonl"""
    out = Path(out)
    stem = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(f"{stem}.errors.jsonl")


def _hint_if_idle(record: dict[str, Any], started: float, queue: str, hinted: bool) -> bool:
    if not hinted and record["status"] == JobStatus.QUEUED.value and time.monotonic() - started > NO_WORKER_HINT_S:
        tqdm.write(f"lstmq: job {record['id']} is still queued: is an lstmq-worker consuming the '{queue}' queue "
                   f"on this broker?", file=sys.stderr)
        return True
    return hinted


def wait_generate(store: Store, job_id: str, poll: float, show: bool) -> dict[str, Any]:
    record = store.job(job_id)
    started, hinted = time.monotonic(), False
    bar = tqdm(total=record.get("prompts", 0), unit="prompt", desc=f"job {job_id}", smoothing=0.1, **_bar_options(show))
    first_words, first_time = record.get("words_done", 0), time.monotonic()
    try:
        while True:
            record = store.job(job_id)
            done = record.get("prompts_done", 0) + record.get("prompts_failed", 0)
            bar.total = record.get("prompts", bar.total)
            bar.update(done - bar.n)
            elapsed = time.monotonic() - first_time
            if elapsed > 0:
                bar.set_postfix_str(f"{(record.get('words_done', 0) - first_words) / elapsed:,.0f} words/s", refresh=False)
            if JobStatus(record["status"]).finished:
                bar.refresh()
                return record
            hinted = _hint_if_idle(record, started, "generate", hinted)
            time.sleep(poll)
    finally:
        bar.close()


def wait_train(store: Store, job_id: str, poll: float, show: bool, log: TextIO) -> dict[str, Any]:
    """Per-epoch progress: a bar on a terminal, one line per epoch otherwise."""
    record = store.job(job_id)
    epochs = record["params"]["epochs"]
    started, hinted, reported = time.monotonic(), False, 0
    bar = tqdm(total=epochs, unit="epoch", desc=f"train {record['model_name']}", **_bar_options(show),
               bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} epochs [{elapsed}<{remaining}{postfix}]")
    try:
        while True:
            record = store.job(job_id)
            epoch = record.get("epoch", 0)
            position = float(epoch)
            if record.get("epoch_running", 0) == epoch + 1 and record.get("steps"):
                position += min(record.get("step", 0) / record["steps"], 0.999)
            bar.update(position - bar.n)
            if epoch > reported:
                reported = epoch
                postfix = f"loss {record['loss']:.4f}"
                if "val_perplexity" in record:
                    postfix += f", val ppl {record['val_perplexity']:.2f}"
                bar.set_postfix_str(postfix)
                if not show:
                    print(f"epoch {epoch}/{epochs}: {postfix}", file=log, flush=True)
            if JobStatus(record["status"]).finished:
                return record
            hinted = _hint_if_idle(record, started, "train", hinted)
            time.sleep(poll)
    finally:
        bar.close()


def write_results(store: Store, job_id: str, out: str | Path) -> tuple[int, list[dict[str, Any]]]:
    """Write OUT.jsonl (and OUT.errors.jsonl when any line or prompt failed). Returns
    (lines written, error records)."""
    record = store.job(job_id)
    model = record["model"]
    failed_chunks = store.failed_chunks(job_id)
    errors = list(store.input_errors(job_id))
    out = Path(out)
    written = 0
    with _atomic(out) as stream:
        for chunk in range(record.get("chunks", 0)):
            items = store.chunk(job_id, chunk)
            results = store.chunk_result(job_id, chunk)
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
                        "id": item["id"], "prompt": item["prompt"], "continuation": continuation, "model": model,
                        "seed": params["seed"], "sample": sample,
                        "params": {key: params[key] for key in ("words", "temperature", "top_k", "top_p", "n")},
                        "unknown_words": result["unknown"],
                    }, ensure_ascii=False) + "\n")
                    written += 1
    errors.sort(key=lambda error: error["line"])
    target = errors_path(out)
    if errors:
        with _atomic(target) as stream:
            for error in errors:
                stream.write(json.dumps(error, ensure_ascii=False) + "\n")
    elif target.exists():
        target.unlink()   # a stale file from an earlier run of the same output
    return written, errors


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
