"""Million-prompt jobs (issue 8): streamed, pipelined submission into compact chunks, and output
written as chunks finish, in input order, never a truncated OUT. Against a real redis-server."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import read_jsonl
from lstmq.producer import submit as submit_module
from lstmq.producer.collect import Output, errors_path
from lstmq.producer.seeds import read_seeds
from lstmq.shared.config import load_settings
from lstmq.shared.messages import Dispatcher
from lstmq.shared.store import JobKind, JobStatus, keys
from lstmq.shared.store.chunks import ChunkBuilder
from lstmq.shared.text import Vocabulary

SETTINGS = load_settings(environ={})
GENERATION = SETTINGS.generation_params().replace(seed=1, words=1)
REPOSITORY = Path(__file__).resolve().parents[1]


def make_job(store, chunks: int, per_chunk: int = 3):
    """A submitted generate job of `chunks` chunks; prompt p<line> on lines 1, 2, ... (line 2 is
    a bad seed line, recorded as an input error)."""
    job = store.jobs.create(JobKind.GENERATE, GENERATION, model_name="m", version=1, model="m@1")
    line = 0
    for chunk in range(chunks):
        builder = ChunkBuilder(GENERATION.to_dict())
        for _ in range(per_chunk):
            line += 1 if line != 1 else 2
            builder.add(line, line, f"p{line} «ü»")
        store.jobs.put_chunk(job, chunk, builder.encode(), lines=line, submit_deadline=time.time() + 60,
                             prompts=per_chunk)
    store.jobs.add_input_errors(job, [{"id": 2, "line": 2, "error": "prompt has no words"}])
    store.jobs.finish_submission(job, chunks=chunks, prompts=chunks * per_chunk, input_errors=1, lines=line)
    return job


def finish_chunk(store, job, chunk):
    items = store.jobs.chunk(job, chunk)
    results = [{"unknown": [], "samples": [f"after {item['prompt']}"], "logprobs": [-0.5]} for item in items]
    assert store.jobs.save_result(job, chunk, results, words=len(items))


def test_output_is_written_in_input_order_as_chunks_finish(store, tmp_path):
    job = make_job(store, chunks=4)
    out = tmp_path / "out.jsonl"
    out.write_text("an earlier run's complete output\n")
    output = Output(store, job, out)
    partial = output.file.temporary
    finish_chunk(store, job, 1)                        # chunk 1 done before chunk 0: nothing yet
    output.advance(store.jobs.get(job))
    assert partial.read_text() == "" and output.next_chunk == 0
    finish_chunk(store, job, 0)
    output.advance(store.jobs.get(job))                # chunks 0 and 1 now, in order
    output.stream.flush()
    assert [line["id"] for line in read_jsonl(partial)] == [1, 3, 4, 5, 6, 7]
    assert out.read_text() == "an earlier run's complete output\n"   # OUT is never a partial file
    store.jobs.fail_chunk(job, 2, "boom", prompts=3)
    output.advance(store.jobs.get(job))                # a failed chunk is an outcome too
    assert output.next_chunk == 3
    finish_chunk(store, job, 3)
    record = store.jobs.get(job)
    assert record.status is JobStatus.FAILED
    written = output.finish(record)
    lines = read_jsonl(out)
    assert [line["id"] for line in lines] == [1, 3, 4, 5, 6, 7, 11, 12, 13]
    assert lines[0] == {"id": 1, "prompt": "p1 «ü»", "continuation": "after p1 «ü»", "model": "m@1", "seed": 1,
                        "sample": 0, "params": {key: value for key, value in GENERATION.to_dict().items()
                                                if key != "seed"},
                        "unknown_words": [], "logprob": -0.5}
    assert written.lines == 9 and not partial.exists()
    errors = read_jsonl(errors_path(out))
    assert errors == [{"id": 2, "line": 2, "error": "prompt has no words"},
                      *({"id": line, "line": line, "error": "generation failed: boom"} for line in (8, 9, 10))]


def test_an_interrupted_output_leaves_out_as_it_was(store, tmp_path):
    job = make_job(store, chunks=2)
    out = tmp_path / "out.jsonl"
    finish_chunk(store, job, 0)
    output = Output(store, job, out)
    output.advance(store.jobs.get(job))
    output.abort()                                     # Ctrl-C, --timeout, an error while waiting
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_job_that_ended_unfinished_reports_every_missing_prompt(store, tmp_path):
    job = make_job(store, chunks=3)
    finish_chunk(store, job, 0)
    store.jobs.cancel(job)
    store.redis.delete(keys.job_key(job, "chunk", 2))   # an input gone: its prompts can only be counted
    output = Output(store, job, tmp_path / "out.jsonl")
    written = output.finish(store.jobs.get(job))
    assert written.lines == 3
    reasons = [(error["line"], error["error"]) for error in written.errors]
    assert reasons[1:4] == [(line, "cancelled (lstmq cancel) before this prompt was generated") for line in (5, 6, 7)]
    assert written.errors[-1]["chunk"] == 2 and written.errors[-1]["prompts"] == 3


def test_submission_streams_pipelined_chunks_and_their_messages(store, redis_server, tmp_path, monkeypatch):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("".join("the door\n" if line % 97 else "...\n" for line in range(1, 5001)), encoding="utf-8")
    settings = load_settings(None, {"broker_url": redis_server.url, "chunk_size": 64, "seed": 5, "words": 1})
    monkeypatch.setattr(submit_module, "model_vocabulary", lambda *_: Vocabulary(["<pad>", "<unk>", "the", "door"]))
    monkeypatch.setattr(store.registry, "resolve", lambda spec: ("m", 1))
    submission = submit_module.submit_generate(store, Dispatcher(settings), settings, seeds, "m")
    bad = [line for line in range(1, 5001) if line % 97 == 0]
    assert (submission.lines, submission.prompts) == (5000, 5000 - len(bad))
    assert [error.line for error in submission.bad_lines] == bad
    assert submission.chunks == -(-submission.prompts // 64) and store.queues.queue_length("generate") == submission.chunks
    record = store.jobs.get(submission.job)
    assert record.submitted and record.chunks_sent == submission.chunks and record.input_errors == len(bad)
    good = [seed for seed in read_seeds(seeds, settings.generation_params(), settings.limits())
            if not hasattr(seed, "error")]
    expected = [seed.item().to_dict() for seed in good]
    stored = [item for chunk in range(submission.chunks) for item in store.jobs.chunk(submission.job, chunk)]
    assert [item["line"] for item in stored] == [item["line"] for item in expected]
    assert stored[0] == expected[0] and stored[-1] == expected[-1]
    assert [error["line"] for error in store.jobs.input_errors(submission.job)] == bad


@pytest.mark.integration
def test_the_quick_benchmark_prints_its_table():
    """python -m benchmarks.million --quick: a real worker, both jobs, every figure against its target."""
    from tests.test_benchmarks import check_table, tables_of

    result = subprocess.run([sys.executable, "-m", "benchmarks.million", "--quick"], capture_output=True, text=True,
                            timeout=600, cwd=REPOSITORY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stdout = result.stdout
    (table,) = tables_of(stdout, 1)
    rows = check_table(table, ["figure", "measured", "target", "met"], text=["figure", "target", "met"])
    figures = {row["figure"]: row for row in rows}
    assert {"submission, lines/s", "collection, lines/s", "producer peak RSS at 2,000 lines, MB",
            "producer peak RSS at 20,000 lines, MB"} <= set(figures)
    assert all(row["met"] in ("yes", "NO", "-") for row in rows)
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert [job["lines"] for job in summary["jobs"]] == [2000, 20000]
