"""The scripting contract: with --json every command prints one JSON object (or the documented
list) that its schema in docs/json accepts, failures included; seeds from standard input and
results to standard output; --dry-run checks a file against the model and sends nothing."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import BIN, WorkerProcess, clean_env, lstmq, read_jsonl

pytestmark = pytest.mark.integration
SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "json"


def check(name: str, text: str):
    data = json.loads(text)   # exactly one JSON document
    jsonschema.validate(data, json.loads((SCHEMAS / f"{name}.schema.json").read_text()))
    return data


@pytest.fixture(scope="module")
def cli(redis_server, small_config, tiny_corpus, tmp_path_factory):
    worker = WorkerProcess(redis_server.url, tmp_path_factory.mktemp("contract") / "worker.log",
                           "--config", str(small_config))
    worker.wait_ready()

    def run(*args, check=True, **kwargs):
        return lstmq(*args, "--broker", redis_server.url, "--config", small_config, check=check, **kwargs)
    run.broker, run.config = redis_server.url, small_config
    try:
        run.trained = check_train(run, tiny_corpus)
        yield run
    finally:
        worker.stop()


def check_train(run, corpus):
    detached = check("train", run("train", corpus, "--model", "contract", "--epochs", "1", "--detach", "--json").stdout)
    assert detached["status"] == "queued" and detached["model"] is None
    run("wait", detached["job"])
    waited = check("train", run("train", corpus, "--model", "contract", "--epochs", "1", "--json").stdout)   # waits
    assert set(waited) == set(detached) and waited["status"] == "succeeded" and waited["model"] == "contract@2"
    return waited


def test_every_command_prints_json_its_schema_accepts(cli, tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("the door opened\n...\nholmes said\n")
    detached = check("generate", cli("generate", seeds, "--model", "contract", "--detach", "--json", "-o",
                                     tmp_path / "d.jsonl", check=False).stdout)
    assert detached["status"] in ("queued", "running", "succeeded") and detached["lines"] == 3
    assert detached["errors_file"] is None              # the workers check the lines: collect writes the errors
    job = detached["job"]
    collected = check("collect", cli("collect", job, "-o", tmp_path / "out.jsonl", "--json", check=False).stdout)
    assert collected["lines"] == 2 and collected["bad_lines"] == 1 and collected["status"] == "succeeded"
    assert collected["check"]["lines_valid"] == 2 and collected["errors_file"].endswith("out.errors.jsonl")
    waiting = check("generate", cli("generate", seeds, "--model", "contract", "-o", tmp_path / "w.jsonl", "--json",
                                    check=False).stdout)
    assert set(waiting) == set(collected)
    record = check("status", cli("status", job, "--json").stdout)
    assert record["created"].endswith("Z") and record["finished"].endswith("Z")
    assert isinstance(check("status", cli("status", "--json").stdout), list)
    check("wait", cli("wait", job, "--json").stdout)
    check("workers", cli("workers", "--json").stdout)
    assert [queue["queue"] for queue in check("queues", cli("queues", "--json").stdout)] == ["train", "generate"]
    check("models-list", cli("models", "--json").stdout)
    check("models-show", cli("models", "show", "contract", "--json").stdout)
    check("models-promote", cli("models", "promote", "contract@1", "--json").stdout)
    check("models-export", cli("models", "export", "contract@1", tmp_path / "export", "--json").stdout)
    check("cancel", cli("cancel", job, "--json").stdout)
    check("rm", cli("rm", job, "--json").stdout)
    check("models-rm", cli("models", "rm", "contract@2", "--json").stdout)


def test_failures_are_json_too(cli, tmp_path):
    for args, status in [(("status", "no-such-job"), 1), (("models", "show", "nobody"), 1),
                         (("generate", tmp_path / "missing.txt", "--model", "contract", "-o", tmp_path / "o.jsonl"), 2),
                         (("wait", "no-such-job", "--timeout", "1"), 1)]:
        result = cli(*args, "--json", check=False)
        assert result.returncode == status, (args, result.stdout, result.stderr)
        error = check("error", result.stdout)
        assert error["exit_status"] == status and error["error"]
    timeout = cli("wait", cli.trained["job"], "--timeout", "0", "--json", check=False)   # ended: no timeout
    assert timeout.returncode == 0


def test_seeds_from_stdin_and_results_to_stdout(cli, tmp_path):
    jsonl = "\n".join(json.dumps({"id": f"p{i}", "prompt": f"holmes said {i}"}) for i in range(5)) + "\n{bad\n"
    result = subprocess.run([str(BIN / "lstmq"), "generate", "-", "--format", "jsonl", "--model", "contract", "-o", "-",
                             "--broker", cli.broker, "--config", str(cli.config), "--json"],
                            input=jsonl, capture_output=True, text=True, env=clean_env(), timeout=120)
    assert result.returncode == 3, result.stderr                       # one bad line
    lines = [json.loads(line) for line in result.stdout.splitlines()]  # stdout holds the JSONL only
    assert [line["id"] for line in lines] == [f"p{i}" for i in range(5)]
    assert "<stdin>:6: not valid JSON" in result.stderr and '"line": 6' in result.stderr
    summary = json.loads(result.stderr.strip().splitlines()[-1])       # --json summary on stderr
    assert summary["lines"] == 5 and summary["output"] == "-"


def test_a_dry_run_checks_the_file_and_sends_nothing(cli, tmp_path):
    before = json.loads(cli("status", "--json", "--limit", "1000").stdout)
    seeds = tmp_path / "night.jsonl"
    seeds.write_text("\n".join([json.dumps({"prompt": "holmes said the door"}),
                                json.dumps({"prompt": "zzyzx qwerty holmes", "words": 3, "n": 2}),
                                json.dumps({"prompt": 5}), json.dumps({"prompt": "zzyzx again"})]) + "\n")
    result = cli("generate", seeds, "--model", "contract", "--dry-run", "--json", "-o", tmp_path / "night-out.jsonl",
                 check=False)
    assert result.returncode == 3                                      # one invalid line
    report = check("generate", result.stdout)
    assert report["job"] is None and report["status"] == "dry-run"
    assert report["check"]["lines_valid"] == 3 and report["check"]["lines_invalid"] == 1
    assert report["check"]["prompts_with_unknown_words"] == 2
    assert report["check"]["top_unknown_words"][0] == ["zzyzx", 2]
    assert report["check"]["words_to_generate"] == 7 + 3 * 2 + 7
    assert 0 < report["check"]["unknown_word_rate"] < 1
    assert len(read_jsonl(tmp_path / "night-out.errors.jsonl")) == 1 and not (tmp_path / "night-out.jsonl").exists()
    assert json.loads(cli("status", "--json", "--limit", "1000").stdout) == before   # no job
    text = cli("generate", seeds, "--model", "contract", "--dry-run", check=False).stdout
    assert "3 valid line(s), 1 invalid" in text and "zzyzx (2)" in text


def test_the_workers_find_what_a_dry_run_finds(cli, tmp_path):
    """A real run checks the lines on the workers, chunk by chunk (here two lines a chunk): the
    same seed report and the same bad lines as a dry run, duplicate ids across chunks included."""
    seeds = tmp_path / "night.jsonl"
    seeds.write_text("\n".join([json.dumps({"id": "a", "prompt": "holmes said the door"}),
                                json.dumps({"prompt": "zzyzx qwerty holmes", "words": 3, "n": 2}),
                                json.dumps({"id": "b", "prompt": 5}), "", json.dumps({"id": 2, "prompt": "the door"}),
                                json.dumps({"id": "a", "prompt": "zzyzx again"}), "{not json",
                                json.dumps({"id": "c", "prompt": "my dear watson", "temperature": float("nan")})])
                     + "\n")
    dry = cli("generate", seeds, "--model", "contract", "--dry-run", "--json", "-o", tmp_path / "dry.jsonl", check=False)
    real = cli("generate", seeds, "--model", "contract", "--json", "-o", tmp_path / "real.jsonl", "--chunk-size", "2",
               check=False)
    assert dry.returncode == real.returncode == 3
    dry_report, real_report = check("generate", dry.stdout), check("generate", real.stdout)
    assert real_report["check"] == dry_report["check"] and dry_report["check"]["lines_invalid"] == 5
    assert real_report["check"]["complete"] and real_report["bad_lines"] == 5 and real_report["prompts"] == 2
    assert read_jsonl(tmp_path / "real.errors.jsonl") == read_jsonl(tmp_path / "dry.errors.jsonl")
    assert [line["id"] for line in read_jsonl(tmp_path / "real.jsonl")] == ["a", 2, 2]
    assert "duplicate id 'a' (first used on line 1)" in real.stderr


def test_progress_lines_when_stderr_is_not_a_terminal(cli, tmp_path):
    seeds = tmp_path / "many.txt"
    seeds.write_text("".join(f"holmes said that the {i} men were\n" for i in range(3000)))
    env = {**clean_env(), "LSTMQ_PROGRESS_INTERVAL": "1"}
    result = cli("generate", seeds, "--model", "contract", "-o", tmp_path / "many.jsonl", "--words", "300",
                 "--chunk-size", "100", env=env)
    lines = [line for line in result.stderr.splitlines() if line.startswith("job ") and " lines (" in line]
    assert len(lines) >= 2, result.stderr                      # at least one while running, and the last one
    assert "/3,000 lines (" in lines[-1] and "words/s" in lines[-1] and lines[-1].split(": ")[1].startswith("succeeded")
    assert any("ETA" in line for line in lines[:-1]) or len(lines) == 2, lines


def test_lines_carry_their_logprob_and_stats_summarize_it(cli, tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("holmes said\nthe door opened\nmy dear watson\n")
    out = tmp_path / "out.jsonl"
    result = cli("generate", seeds, "--model", "contract", "-o", out, "--stats", "--temperature", "1", "--n", "2")
    lines = read_jsonl(out)
    assert len(lines) == 6 and all(isinstance(line["logprob"], float) and line["logprob"] <= 0 for line in lines)
    assert "logprob per word over 6 lines: mean -" in result.stderr
    summary = json.loads(cli("collect", json.loads(cli("status", "--json", "--limit", "1").stdout)[0]["id"],
                             "-o", tmp_path / "again.jsonl", "--json").stdout)
    stats = summary["logprob"]
    assert stats["lines"] == 6 and stats["min"] <= stats["median"] <= stats["max"] <= 0
    assert stats["mean"] == pytest.approx(sum(line["logprob"] for line in lines) / 6, abs=1e-3)


def test_the_python_api_does_what_the_cli_does(cli, tiny_corpus, tmp_path):
    """from lstmq import Client, LstmqError: the same jobs, the same rows, the same errors, as
    the CLI's, against the real worker; failures raise LstmqError subclasses, never SystemExit."""
    from lstmq import Client, LstmqError
    from lstmq.shared.errors import BrokerUnavailable, InputError, JobFailed, ModelNotFound

    client = Client(broker_url=cli.broker, config=cli.config)
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("holmes said the door\n...\nmy dear watson\n")
    cli("generate", seeds, "--model", "contract", "-o", tmp_path / "cli.jsonl", "--seed", "4", "--words", "3",
        check=False)
    job = client.generate(seeds, model="contract", seed=4, words=3)
    assert job.kind == "generate" and len(job.id) == 16
    assert list(job.results()) == read_jsonl(tmp_path / "cli.jsonl")          # the very rows the CLI writes
    assert job.errors() == read_jsonl(tmp_path / "cli.errors.jsonl")
    status = job.wait()
    assert status["status"] == "succeeded" and status["check"]["lines_invalid"] == 1
    assert status == check("status", cli("status", job.id, "--json").stdout)
    # prompts from Python: strings and dicts, per-line parameters, ids by position
    rows = list(client.generate(["holmes said", {"id": "x", "prompt": "the door", "n": 2}, {"prompt": 5}],
                                model="contract", words=2, seed=1).results())
    assert [(row["id"], row["sample"]) for row in rows] == [(1, 0), ("x", 0), ("x", 1)]
    assert all(len(row["continuation"].split()) == 2 for row in rows)
    # training: returns at once; wait() gives the status, with the promotion's verdict
    trained = client.train(tiny_corpus, model="contract", epochs=1, promote="if-better").wait(timeout=300)
    assert trained["status"] == "succeeded" and isinstance(trained["promoted"], bool) and trained["promotion"]
    listed = {model["name"]: model for model in client.models()}
    assert listed["contract"] == client.model("contract") == check("models-show", cli("models", "show", "contract",
                                                                                      "--json").stdout)
    assert client.workers() and client.workers()[0]["queues"]
    # errors are exceptions with the CLI's words
    with pytest.raises(ModelNotFound, match="no model named 'nosuch'"):
        client.generate(["x"], model="nosuch")
    with pytest.raises(InputError, match="promote must be one of"):
        client.train(tiny_corpus, model="contract", promote="sometimes")
    with pytest.raises(BrokerUnavailable, match="cannot reach Redis"):
        Client(broker_url="redis://127.0.0.1:1/0").models()
    empty = tmp_path / "bad.txt"
    empty.write_text("...\n???\n")
    with pytest.raises(JobFailed, match="no usable line") as failed:
        client.generate(empty, model="contract").wait(timeout=120)
    assert isinstance(failed.value, LstmqError) and failed.value.status["status"] == "failed"


def test_output_and_error_lines_match_their_schemas(cli, tmp_path):
    """docs/json/output-line.schema.json and error-line.schema.json describe what the workers write."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join([json.dumps({"id": "a", "prompt": "holmes said", "n": 2, "temperature": 0.8}),
                                json.dumps({"prompt": "zzyzx the door"}), "{bad", json.dumps({"prompt": ""})]) + "\n")
    cli("generate", seeds, "--model", "contract", "-o", tmp_path / "out.jsonl", "--words", "2", check=False)
    output_schema = json.loads((SCHEMAS / "output-line.schema.json").read_text())
    error_schema = json.loads((SCHEMAS / "error-line.schema.json").read_text())
    lines, errors = read_jsonl(tmp_path / "out.jsonl"), read_jsonl(tmp_path / "out.errors.jsonl")
    assert len(lines) == 3 and len(errors) == 2
    for line in lines:
        jsonschema.validate(line, output_schema)
    for error in errors:
        jsonschema.validate(error, error_schema)


def test_the_readme_is_a_page_a_newcomer_reads():
    """At most 20,000 characters, with the install line, a first run, the output's logprob, and an
    index whose every docs/ link resolves."""
    import re

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert len(readme) <= 20_000
    assert "pip install '.[cpu]'" in readme and '"logprob"' in readme and "lstmq-worker" in readme
    for page in ("operations", "design", "decoding", "performance", "development", "api"):
        assert f"docs/{page}.md" in readme, page
    for document in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", document.read_text(encoding="utf-8")):
            if "://" not in target:
                assert (document.parent / target).exists(), f"{document.name}: broken link {target}"
