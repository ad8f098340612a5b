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
from lstmq.producer.collect import Output, errors_path, write_results
from lstmq.shared.config import load_settings
from lstmq.shared.messages import Dispatcher
from lstmq.shared.store import JobKind, JobStatus, keys
from lstmq.shared.store.chunks import ChunkResult
from lstmq.worker.jobs.chunks import ParsedChunk

SETTINGS = load_settings(environ={})
GENERATION = SETTINGS.generation_params().replace(seed=1, words=1)
REPOSITORY = Path(__file__).resolve().parents[1]


def make_job(store, chunks: int, per_chunk: int = 3, fmt: str = "txt", lines=None):
    """A submitted generate job of `chunks` chunks of `per_chunk` seed lines: "p<line> «ü»" on
    each line but line 2 ("...", a bad line); or `lines` (bytes, one per line) when given."""
    job = store.jobs.create(JobKind.GENERATE, GENERATION, model_name="m", version=1, model="m@1",
                            seeds_file=f"seeds.{fmt}", seed_format=fmt)
    lines = lines or [b"..." if line == 2 else f"p{line} «ü»".encode() for line in range(1, chunks * per_chunk + 1)]
    for chunk in range(chunks):
        data = b"".join(line + b"\n" for line in lines[chunk * per_chunk:(chunk + 1) * per_chunk])
        store.jobs.put_chunk(job, chunk, data, chunk * per_chunk + 1, submit_deadline=time.time() + 60)
    store.jobs.finish_submission(job, chunks=chunks, lines=len(lines))
    return job


class FakePlan:
    """What decoding gives a worker, without a model: "after PROMPT" for each prompt, logprob -0.5."""

    def __init__(self, chunk_input):
        self.prompt_words = self.words_to_generate = len(chunk_input)
        self.columns = ChunkResult([f"after {prompt}" for prompt in chunk_input.prompts], None,
                                   [-0.5] * len(chunk_input), {}, {})

    def result(self):
        return self.columns


def finish_chunk(store, job, chunk):
    """Do what a worker does with the chunk, but decoding: parse, register ids, write the output."""
    record = store.jobs.get(job)
    first, count, data = store.jobs.chunk_source(job, chunk)
    parsed = ParsedChunk.parse(record, first, data, SETTINGS, lambda entries: store.jobs.register_ids(job, entries))
    output, report = parsed.output(record.model, FakePlan(parsed.input), count)
    assert store.jobs.save_output(job, chunk, output, len(parsed.input), report)


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
    assert [line["id"] for line in read_jsonl(partial)] == [1, 3, 4, 5, 6]
    assert out.read_text() == "an earlier run's complete output\n"   # OUT is never a partial file
    store.jobs.fail_chunk(job, 2, "boom")
    output.advance(store.jobs.get(job))                # a failed chunk is an outcome too
    assert output.next_chunk == 3
    finish_chunk(store, job, 3)
    record = store.jobs.get(job)
    assert record.status is JobStatus.FAILED
    assert (record.prompts, record.input_errors, record.lines_done, record.lines_failed) == (8, 1, 9, 3)
    written = output.finish(record)
    lines = read_jsonl(out)
    assert [line["id"] for line in lines] == [1, 3, 4, 5, 6, 10, 11, 12]
    assert lines[0] == {"id": 1, "prompt": "p1 «ü»", "continuation": "after p1 «ü»", "model": "m@1", "seed": 1,
                        "sample": 0, "params": {key: value for key, value in GENERATION.to_dict().items()
                                                if key != "seed"},
                        "unknown_words": [], "logprob": -0.5}
    assert written.lines == 8 and written.errors == 4 and not partial.exists()
    assert written.logprob_stats()["lines"] == 8 and written.logprob_stats()["median"] == -0.5
    errors = read_jsonl(errors_path(out))
    assert errors == [{"id": 2, "line": 2, "error": "prompt has no words (only spaces or punctuation)"},
                      *({"id": line, "line": line, "error": "generation failed: boom"} for line in (7, 8, 9))]


def test_duplicate_ids_across_chunks_are_reported_whichever_chunk_ran_first(store, tmp_path):
    """Chunk 1 runs before chunk 0: its "a" on line 5 was written before line 1 claimed "a". The
    collector leaves line 5 out and reports it with both lines, as a dry run would."""
    rows = [{"id": "a", "prompt": "one"}, {"prompt": "implied two"}, {"id": "b", "prompt": "three"},
            {"id": 2, "prompt": "four"}, {"id": "a", "prompt": "five"}, {"id": "c", "prompt": "six"}]
    job = make_job(store, chunks=2, fmt="jsonl", lines=[json.dumps(row).encode() for row in rows])
    finish_chunk(store, job, 1)
    finish_chunk(store, job, 0)
    record = store.jobs.get(job)
    assert record.status is JobStatus.SUCCEEDED and (record.prompts, record.input_errors) == (4, 2)
    written = write_results(store, job, tmp_path / "out.jsonl")
    assert [line["prompt"] for line in read_jsonl(tmp_path / "out.jsonl")] == ["one", "implied two", "three", "six"]
    assert written.lines == 4 and written.errors == 2 and written.logprob_stats()["lines"] == 4
    assert read_jsonl(tmp_path / "out.errors.jsonl") == [
        {"id": 2, "line": 4, "error": 'duplicate id 2 (line 2 has no "id", so its id is its line number; '
                                      'line 4 sets "id": 2)'},
        {"id": "a", "line": 5, "error": "duplicate id 'a' (first used on line 1)"}]


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
    store.redis.delete(keys.job_key(job, "chunk", 2))   # an input gone: its lines can only be counted
    written = write_results(store, job, tmp_path / "out.jsonl")
    assert written.lines == 2
    errors = read_jsonl(tmp_path / "out.errors.jsonl")
    reasons = [(error["line"], error["error"]) for error in errors]
    assert reasons[:4] == [(2, "prompt has no words (only spaces or punctuation)"),
                           *((line, "cancelled (lstmq cancel) before this prompt was generated") for line in (4, 5, 6))]
    assert errors[-1]["chunk"] == 2 and errors[-1]["lines"] == 3 and written.errors == 5


def test_submission_moves_the_seed_bytes_untouched(store, redis_server, tmp_path, monkeypatch):
    """The producer cuts the file into chunks of whole lines and stores their bytes as they are
    (the workers parse them); only a line too long to be a seed line is cut out and reported."""
    seeds = tmp_path / "seeds.txt"
    lines = ["the door" if line % 97 else "..." for line in range(1, 5001)]
    lines[999] = "x" * (SETTINGS.max_line_bytes + 5)
    data = ("\ufeff" + "\n".join(lines) + "\n").encode()
    seeds.write_bytes(data)
    settings = load_settings(None, {"broker_url": redis_server.url, "chunk_size": 64, "seed": 5, "words": 1})
    monkeypatch.setattr(store.registry, "resolve", lambda spec: ("m", 1))
    submission = submit_module.submit_generate(store, Dispatcher(settings), settings, seeds, "m")
    assert (submission.lines, submission.prompts, submission.chunks) == (5000, None, -(-5000 // 64))
    assert [(error.line, error.error) for error in submission.bad_lines] == [
        (1000, f"line is {SETTINGS.max_line_bytes + 5} bytes, over max_line_bytes ({SETTINGS.max_line_bytes})")]
    assert store.queues.queue_length("generate") == submission.chunks
    record = store.jobs.get(submission.job)
    assert record.submitted and record.chunks_sent == submission.chunks and record.lines == 5000
    assert record.input_errors == 1 and record.seed_format == "txt"
    sources = [store.jobs.chunk_source(submission.job, chunk) for chunk in range(submission.chunks)]
    assert [first for first, _count, _data in sources] == list(range(1, 5001, 64))
    lines[999] = ""
    assert b"".join(data for _first, _count, data in sources) == ("\n".join(lines) + "\n").encode()
    assert store.jobs.input_errors(submission.job)[0]["chunk"] == 999 // 64


def test_a_file_of_blank_lines_makes_no_job(store, redis_server, tmp_path, monkeypatch):
    seeds = tmp_path / "blank.txt"
    seeds.write_text("\n  \n\t\n")
    settings = load_settings(None, {"broker_url": redis_server.url})
    monkeypatch.setattr(store.registry, "resolve", lambda spec: ("m", 1))
    before = store.jobs.recent(1000)
    with pytest.raises(submit_module.NoPrompts, match="no prompt in the file .* no job was made"):
        submit_module.submit_generate(store, Dispatcher(settings), settings, seeds, "m")
    assert store.jobs.recent(1000) == before


@pytest.mark.integration
def test_the_quick_benchmark_prints_its_table():
    """python -m benchmarks.million --quick: a real worker, both jobs, the producer alone each way, Redis,
    memory and end to end, every figure against its target."""
    from tests.test_benchmarks import check_table, tables_of

    result = subprocess.run([sys.executable, "-m", "benchmarks.million", "--quick"], capture_output=True, text=True,
                            timeout=600, cwd=REPOSITORY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stdout = result.stdout
    (table,) = tables_of(stdout, 1)
    rows = check_table(table, ["figure", "measured", "target", "met"], text=["figure", "target", "met"])
    figures = {row["figure"]: row for row in rows}
    assert {f"{what}, {figure} ({how})" for what in ("submission", "collection")
            for figure in ("lines/s", "CPU us/line") for how in ("whole command", "marginal")} <= set(figures)
    assert {"Redis job peak / raw bytes (sampled)", "submission peak RSS at 2,000 lines, MB",
            "submission peak RSS at 20,000 lines, MB", "submission RSS 20,000 / 2,000 lines",
            "collection peak RSS at 2,000 lines, MB", "collection peak RSS at 20,000 lines, MB",
            "collection RSS 20,000 / 2,000 lines", "end to end / worker alone, lines/s",
            "3 workers: end to end / workers alone"} <= set(figures)
    assert all(row["met"] in ("yes", "NO", "-") for row in rows)
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert [job["lines"] for job in summary["jobs"]] == [2000, 20000]
