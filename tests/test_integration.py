"""End to end with real parts: a redis-server of our own, a real lstmq-worker (launcher, Celery
prefork parent, pool process with TensorFlow), the real CLI as subprocesses."""
from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lstmq.shared.store import Store
from tests.conftest import BIN, WorkerProcess, clean_env, lstmq, read_jsonl, wait_for
from tests.devstack import artifact_variant, register_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def worker(redis_server, small_config, tmp_path_factory, shadowing_dir):
    # started, like the CLI below, in a directory whose worker.py, config.py, shared/ and lstmq/ raise on import
    process = WorkerProcess(redis_server.url, tmp_path_factory.mktemp("worker") / "worker.log",
                            "--config", str(small_config), cwd=shadowing_dir)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def cli(redis_server, small_config, shadowing_dir):
    def run(*args, check=True, **kwargs):
        kwargs.setdefault("cwd", shadowing_dir)
        return lstmq(*args, "--broker", redis_server.url, "--config", small_config, check=check, **kwargs)
    return run


@pytest.fixture(scope="module")
def trained(worker, cli, corpus_slice):
    result = cli("train", corpus_slice, "--model", "sherlock", "--wait", "--json")
    return json.loads(result.stdout), result


def test_train_waits_with_epochs_and_registers_a_version(trained, cli, corpus_slice):
    summary, result = trained
    assert summary["status"] == "succeeded" and summary["model"] == "sherlock@1" and summary["job"]
    assert summary["epochs_run"] == 2 and summary["val_perplexity"] > 1
    assert "epoch 1/2: loss" in result.stderr and "epoch 2/2: loss" in result.stderr
    listing = json.loads(cli("models", "--json").stdout)
    shown = json.loads(cli("models", "sherlock", "--json").stdout)
    assert listing == [shown] and (shown["name"], shown["current"], shown["latest"]) == ("sherlock", 1, 1)
    versions = shown["versions"]
    assert versions[0]["created"].endswith("Z") and versions[0]["registered"].endswith("Z")
    assert versions[0]["model"] == "sherlock@1" and versions[0]["aliases"] == ["current"]
    assert versions[0]["corpus_sha256"] == hashlib.sha256(corpus_slice.read_bytes()).hexdigest()
    status = json.loads(cli("status", summary["job"], "--json").stdout)
    assert status["status"] == "succeeded" and status["epoch"] == 2 and status["kind"] == "train"
    assert [entry["epoch"] for entry in status["history"]] == [1, 2]
    assert all(entry["seconds"] > 0 and entry["val_perplexity"] > 1 for entry in status["history"])
    assert "epoch 2: loss" in cli("status", summary["job"]).stdout
    # each epoch records continuations at three temperatures, shown by status
    samples = status["history"][-1]["samples"]
    assert [sample["temperature"] for sample in samples] == [0.2, 0.5, 1.0]
    assert all(len(sample["text"].split()) == 8 and len(sample["prompt"].split()) == 3 for sample in samples)
    assert "t=0.5: " in cli("status", summary["job"]).stdout
    assert "sherlock" in cli("status").stdout


def test_generate_txt_with_bad_lines(trained, cli, tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_bytes(b"I will close the door if\n\nholmes looked at\n?!?\nthe bad \xfe byte\nzzyzx qwerty\nmy dear watson\n")
    out = tmp_path / "out.jsonl"
    result = cli("generate", seeds, "--model", "sherlock", "-o", out, "--seed", "3", check=False)
    assert result.returncode == 3, result.stderr
    assert f"{seeds}:4: prompt has no words" in result.stderr
    assert f"{seeds}:5: not valid UTF-8 (byte 0xfe at column 9)" in result.stderr
    lines = read_jsonl(out)
    assert [line["id"] for line in lines] == [1, 3, 6, 7]
    assert [line["prompt"] for line in lines] == ["I will close the door if", "holmes looked at", "zzyzx qwerty", "my dear watson"]
    for line in lines:
        assert set(line) == {"id", "prompt", "continuation", "model", "seed", "sample", "params", "unknown_words",
                             "logprob"}
        assert line["logprob"] <= 0
        assert line["model"] == "sherlock@1" and line["seed"] == 3 and line["sample"] == 0
        assert line["params"] == {"words": 7, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "n": 1}
        assert len(line["continuation"].split()) == 7
    assert lines[2]["unknown_words"] == ["zzyzx", "qwerty"] and lines[0]["unknown_words"] == []
    errors = read_jsonl(tmp_path / "out.errors.jsonl")
    assert errors == [{"id": 4, "line": 4, "error": "prompt has no words (only spaces or punctuation)"},
                      {"id": 5, "line": 5, "error": "not valid UTF-8 (byte 0xfe at column 9)"}]


def test_greedy_output_equals_the_seed_loop_on_the_exported_model(trained, cli, tmp_path):
    keras = pytest.importorskip("keras")
    from tests.oracle import reference_greedy
    from lstmq.shared.text import Vocabulary

    export = tmp_path / "export"
    cli("models", "export", "sherlock@1", export)
    model = keras.saving.load_model(export / "model.keras")
    vocabulary = Vocabulary(json.loads((export / "vocab.json").read_text()))
    meta = json.loads((export / "meta.json").read_text())
    assert meta["network"] == {"vocab_size": len(vocabulary), "embedding_dim": 32, "lstm_units": 48,
                               "layers": ["Embedding(mask_zero)", "LSTM", "Dense", "Softmax"]}
    assert meta["context_feed"]["padding"].startswith("right") and meta["metrics"]["epochs_run"] == 2
    prompts = ["It was a cold morning", "Sherlock Holmes", "the door", "she said that she would"]
    seeds = tmp_path / "greedy.txt"
    seeds.write_text("\n".join(prompts) + "\n")
    out = tmp_path / "greedy.jsonl"
    cli("generate", seeds, "--model", "sherlock@1", "-o", out, "--words", "6", "--chunk-size", "3")
    for line, prompt in zip(read_jsonl(out), prompts):
        expected = reference_greedy(model, vocabulary.encode(prompt)[0], 6, window=17)
        assert line["continuation"] == " ".join(vocabulary.decode(expected))


def test_generate_jsonl_with_parameters_bad_lines_and_determinism(trained, cli, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("\n".join([
        json.dumps({"id": "a", "prompt": "the man", "words": 3, "temperature": 0.8, "top_k": 20, "n": 2, "seed": 11}),
        '{"id": "b", "prompt": "holmes said", "temperature": "warm"}',
        "not json at all",
        json.dumps({"id": "c", "prompt": "i saw", "top_p": 0.9, "temperature": 1.0}),
        json.dumps({"id": "a", "prompt": "duplicate id"}),
        json.dumps({"id": 9, "prompt": "watson"}),
    ]) + "\n")
    out = tmp_path / "out.jsonl"
    result = cli("generate", seeds, "--model", "sherlock", "-o", out, "--seed", "5", "--words", "4", "--chunk-size", "1",
                 "--json", check=False)
    assert result.returncode == 3
    summary = json.loads(result.stdout)
    assert summary["lines"] == 4 and summary["errors"] == 3 and summary["prompts"] == 3
    lines = read_jsonl(out)
    assert [(line["id"], line["sample"]) for line in lines] == [("a", 0), ("a", 1), ("c", 0), (9, 0)]
    assert [len(line["continuation"].split()) for line in lines] == [3, 3, 4, 4]
    assert lines[0]["seed"] == 11 and lines[2]["seed"] == 5
    assert lines[0]["params"] == {"words": 3, "temperature": 0.8, "top_k": 20, "top_p": 1.0, "n": 2}
    errors = read_jsonl(tmp_path / "out.errors.jsonl")
    assert [(error["id"], error["line"]) for error in errors] == [("b", 2), (None, 3), ("a", 5)]
    assert "field 'temperature' must be a number" in errors[0]["error"]
    assert "not valid JSON" in errors[1]["error"] and "duplicate id 'a'" in errors[2]["error"]
    # same seed file, other chunking: the same samples
    again = tmp_path / "again.jsonl"
    cli("generate", seeds, "--model", "sherlock@1", "-o", again, "--seed", "5", "--words", "4", "--chunk-size", "100",
        check=False)
    assert read_jsonl(again) == lines


def test_detach_collect_status_and_pinned_version(trained, cli, redis_server, random_artifact, tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("\n".join(f"prompt number {i} was" for i in range(40)) + "\n")
    detached = cli("generate", seeds, "--model", "sherlock", "--detach", "--json", "--chunk-size", "7")
    job = json.loads(detached.stdout)["job"]
    assert json.loads(detached.stdout)["model"] == "sherlock@1"
    # a new version (as retraining registers it) while the job is queued or running: sherlock@2 is
    # current, and the job stays on @1
    assert register_model(Store.from_url(redis_server.url, ttl=3600), "sherlock", random_artifact) == 2
    assert json.loads(cli("models", "show", "sherlock", "--json").stdout)["aliases"]["current"] == 2
    out = tmp_path / "collected.jsonl"
    summary = json.loads(cli("collect", job, "-o", out, "--json").stdout)
    assert summary["status"] == "succeeded" and summary["lines"] == 40
    lines = read_jsonl(out)
    assert [line["id"] for line in lines] == list(range(1, 41))
    assert {line["model"] for line in lines} == {"sherlock@1"}
    status = json.loads(cli("status", job, "--json").stdout)
    assert (status["chunks"], status["chunks_done"], status["prompts_done"]) == (6, 6, 40)
    assert status["words_done"] == 280
    # collecting again rewrites the same file
    cli("collect", job, "-o", out)
    assert read_jsonl(out) == lines


def test_cli_errors_are_clear(trained, cli, tmp_path):
    binary = tmp_path / "corpus.txt"
    binary.write_bytes(b"fine line of words\nsecond \x80 line\n")
    result = cli("train", binary, "--model", "x", check=False)
    assert result.returncode == 2 and f"{binary}:2: not valid UTF-8" in result.stderr
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("one\n")
    result = cli("train", tiny, "--model", "x", check=False)
    assert result.returncode == 2 and "training needs at least 2" in result.stderr
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("hello there\n")
    result = cli("generate", seeds, "--model", "nosuch", "-o", tmp_path / "o.jsonl", check=False)
    assert result.returncode == 1 and "no model named 'nosuch'" in result.stderr
    result = cli("generate", seeds, "--model", "sherlock@9", "-o", tmp_path / "o.jsonl", check=False)
    assert result.returncode == 1 and "has no version 9" in result.stderr
    result = cli("generate", seeds, "--model", "sherlock", check=False)
    assert result.returncode == 2 and "missing -o/--output" in result.stderr
    result = cli("generate", tmp_path / "seeds.csv", "--model", "sherlock", "-o", tmp_path / "o.jsonl", check=False)
    assert result.returncode == 2 and "must end in .txt" in result.stderr
    result = cli("generate", seeds, "--model", "sherlock", "-o", tmp_path / "o.jsonl", "--top-p", "2", check=False)
    assert result.returncode == 2 and "'top_p' must be <= 1" in result.stderr
    result = lstmq("status", "--broker", "redis://127.0.0.1:1/0", check=False)
    assert result.returncode == 1 and "cannot reach Redis at redis://127.0.0.1:1/0" in result.stderr
    # a broker lstmq cannot use is a usage error naming what it takes, never a traceback; --json too
    result = lstmq("status", "--broker", "amqp://guest:secret@rabbit//", check=False)
    assert result.returncode == 2 and "must be a Redis URL (redis://, rediss://, unix://, sentinel://)" in result.stderr
    assert "Traceback" not in result.stderr and "secret" not in result.stderr
    result = lstmq("-b", "amqp://guest@rabbit//", "status", "--json", check=False)
    assert result.returncode == 2 and json.loads(result.stdout)["exit_status"] == 2
    result = cli("generate", seeds, "--model", "sherlock", "--bogus", "--json", check=False)   # click's own usage error
    assert result.returncode == 2 and json.loads(result.stdout) == {"error": "No such option '--bogus'.",
                                                                    "exit_status": 2}
    for conflict in (["train", seeds, "--model", "x", "--no-promote", "--promote-if-better"],
                     ["train", seeds, "--model", "x", "--wait", "--detach"],
                     ["generate", seeds, "--model", "sherlock", "--detach", "--dry-run"],
                     ["generate", seeds, "--model", "sherlock", "--detach", "--stats"]):
        result = cli(*conflict, check=False)
        assert result.returncode == 2 and "exclude each other" in result.stderr or "does not go with" in \
            result.stderr or "goes with waiting" in result.stderr, (conflict, result.stderr)
    typo = tmp_path / "typo.yaml"
    typo.write_text("chunk_sise: 100\n")
    result = lstmq("status", "--config", typo, "--broker", "redis://127.0.0.1:1/0", check=False)   # read first
    assert result.returncode == 2 and "unknown setting 'chunk_sise' (did you mean 'chunk_size'?)" in result.stderr
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    result = cli("generate", blank, "--model", "sherlock", "--dry-run", check=False)
    assert result.returncode == 2 and "no prompt in the file" in result.stderr
    before = cli("status", "--json").stdout
    result = cli("generate", blank, "--model", "sherlock", "--detach", check=False)
    assert result.returncode == 2 and "no job was made" in result.stderr and cli("status", "--json").stdout == before


def test_cli_conventions(trained, cli, redis_server, tmp_path):
    """-b/--broker before or after the command (as celery takes it); lstmq-worker --version;
    `.env.example` sourced as compose users do breaks nothing; a config file found in
    ~/.config/lstmq without being named."""
    job = trained[0]["job"]
    assert json.loads(lstmq("-b", redis_server.url, "status", job, "--json").stdout)["id"] == job
    assert json.loads(lstmq("status", job, "-b", redis_server.url, "--json").stdout)["id"] == job
    version = subprocess.run([str(BIN / "lstmq-worker"), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("lstmq-worker, version ")
    example = Path(__file__).resolve().parents[1] / ".env.example"
    sourced = {name: value for name, _, value in (line.partition("=") for line in example.read_text().splitlines()
                                                  if "=" in line and not line.startswith("#"))}
    assert not [name for name in sourced if name.startswith("LSTMQ_")]   # compose-only names are not settings
    result = lstmq("status", "-b", redis_server.url, env={**clean_env(), **sourced}, check=False)
    assert result.returncode == 0, result.stderr
    home = tmp_path / "home"
    (home / ".config" / "lstmq").mkdir(parents=True)
    (home / ".config" / "lstmq" / "config.yaml").write_text(f"broker_url: {redis_server.url}\n")
    env = {key: value for key, value in clean_env().items() if key != "LSTMQ_BROKER_URL"}
    found = lstmq("status", job, "--json", env={**env, "HOME": str(home)}, check=False)
    assert found.returncode == 0 and json.loads(found.stdout)["id"] == job, found.stderr


def test_status_is_for_people(trained, cli, tmp_path):
    """`lstmq status JOB`: kind, model, state, progress, pace, created and age, failures with their
    reasons; the job table has age and reason columns."""
    text = cli("status", trained[0]["job"]).stdout
    for label in ("job:", "status: succeeded", "model: sherlock@1", "progress: epoch 2/2", "created:", " ago)",
                  "finished:", "epoch 1:"):
        assert label in text, text
    assert "submit_deadline" not in text and "slices" not in text        # the raw record is --json's
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("holmes said\n")
    other = json.loads(cli("generate", seeds, "--model", "sherlock", "--detach", "--json").stdout)["job"]
    cli("wait", other, check=False)
    table = cli("status").stdout.splitlines()
    assert other in "\n".join(table) and table[1].split()[:7] == ["JOB", "KIND", "STATUS", "AGE", "MODEL", "PROGRESS", "PACE"] and "REASON" in table[1]


def test_worker_survives_bad_messages(trained, cli, worker, redis_server, tmp_path):
    import redis
    from celery import Celery

    from lstmq.worker.transport import dead_letter_key

    children = lambda pid: [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    celery_main = children(worker.process.pid)
    client = redis.Redis.from_url(redis_server.url)
    app = Celery(broker=redis_server.url)
    app.conf.task_serializer = "json"
    unknown_job = app.send_task("lstmq.generate", kwargs={"job": "no-such-job", "chunk": 0}, queue="generate")
    app.send_task("lstmq.generate", kwargs={"job": 17, "chunk": "x"}, queue="generate")
    app.send_task("lstmq.generate", args=["positional", "garbage", 3], queue="generate")
    app.send_task("lstmq.train", kwargs={"job": "no-such-job"}, queue="train")
    raw = b"this is not a celery message"
    client.lpush("generate", raw)
    seeds = tmp_path / "after.txt"
    seeds.write_text("after the bad messages\n")
    out = tmp_path / "after.jsonl"
    cli("generate", seeds, "--model", "sherlock@1", "-o", out, timeout=120)
    assert len(read_jsonl(out)) == 1
    # the undecodable entry went to the dead-letter list (it came off the queue before the chunk did)...
    deadline = time.monotonic() + 30
    while raw not in client.lrange(dead_letter_key("generate"), 0, -1) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert raw in client.lrange(dead_letter_key("generate"), 0, -1)
    # ...which the fleet view shows: counted beside the queue depths, listed by `lstmq queues`
    assert "dead-lettered: generate 1 (lstmq queues shows them)" in cli("workers").stdout
    queues = {queue["queue"]: queue for queue in json.loads(cli("queues", "--json").stdout)}
    assert queues["generate"]["dead_letters"] == 1 and queues["generate"]["consumers"] == 1
    assert queues["generate"]["newest_dead_letters"] == [repr(raw)] and queues["train"]["dead_letters"] == 0
    assert repr(raw) in cli("queues").stdout
    purged = json.loads(cli("queues", "--purge-dead-letters", "--json").stdout)
    assert {queue["queue"]: queue["purged"] for queue in purged} == {"train": 0, "generate": 1}
    assert client.llen(dead_letter_key("generate")) == 0
    # ...and no worker was taken down: no restart, the same Celery main process
    assert worker.process.poll() is None
    assert children(worker.process.pid) == celery_main
    log = worker.text()
    assert "undecodable entry on queue 'generate'" in log and repr(raw) in log
    assert "restarting" not in log and "Unrecoverable error" not in log
    assert "rejected generate message {'job': 'no-such-job', 'chunk': 0}: no job 'no-such-job'" in log
    assert "rejected generate message {'job': 17, 'chunk': 'x'}: message has no job id (got 17)" in log
    assert "message has unexpected arguments ['positional', 'garbage', 3]" in log
    assert "rejected train message {'job': 'no-such-job'}: no job 'no-such-job'" in log
    # rejected the Celery way, never reported as a success
    assert f"lstmq.generate[{unknown_job.id}] succeeded" not in log


def test_messages_are_json_and_carry_only_ids(small_config):
    import redis

    from lstmq.shared.config import load_settings
    from tests.devstack import LocalRedis
    from lstmq.shared.messages import Dispatcher

    with LocalRedis() as server:   # no worker here: the message stays on the queue to be read
        settings = load_settings(small_config, {"broker_url": server.url}, environ={})
        with Dispatcher(settings).chunks("j") as send:
            send(3)
        raw = redis.Redis.from_url(server.url).lrange("generate", 0, -1)
    message = json.loads(raw[0])
    assert message["content-type"] == "application/json" and message["headers"]["task"] == "lstmq.generate"
    args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert (args, kwargs) == ([], {"job": "j", "chunk": 3})


def test_tensorflow_stays_out_of_the_producer_and_the_prefork_parent(worker):
    # every module of the contract, the producer and the Celery side (the engine aside) imports
    # without TensorFlow (tests/test_imports.py checks the import statements; this, what runs)
    modules = ["lstmq.worker.app", "lstmq.worker.tasks", "lstmq.worker.launch", "lstmq.worker.run",
               "lstmq.worker.runtime", "lstmq.worker.transport", "lstmq.worker.metrics", "lstmq.worker.jobs.leases",
               "lstmq.worker.jobs.training", "lstmq.worker.jobs.chunks", "lstmq.worker.engine"]
    for side in ("shared", "producer"):
        modules += [f"lstmq.{side}." + ".".join(path.with_suffix("").relative_to(side).parts)
                    for path in sorted(Path(side).rglob("*.py")) if path.name != "__init__.py"]
    code = f"import sys, {', '.join(modules)}; sys.exit('tensorflow' in sys.modules or 'keras' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], env=clean_env()).returncode == 0
    # launcher -> Celery main process (prefork parent) -> pool process
    children = lambda pid: [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    parents = children(worker.process.pid)
    assert len(parents) == 1
    pool = children(parents[0])
    assert pool, "the prefork parent has no pool process"
    maps = lambda pid: Path(f"/proc/{pid}/maps").read_text()
    assert "tensorflow" not in maps(parents[0])
    assert any("tensorflow" in maps(pid) for pid in pool)
    environ = Path(f"/proc/{parents[0]}/environ").read_bytes().split(b"\0")
    assert b"CUDA_VISIBLE_DEVICES=-1" in environ and b"TF_FORCE_GPU_ALLOW_GROWTH=true" in environ
    assert "device cpu" in worker.text() and "loaded model sherlock@1" in worker.text()


def test_cli_help_answers(tmp_path):
    started = time.monotonic()
    result = lstmq("--help")
    assert "generate" in result.stdout and "train" in result.stdout
    assert "lstmq-worker" not in result.stdout
    result = subprocess.run([str(BIN / "lstmq-worker"), "--help"], capture_output=True, text=True, env=clean_env())
    assert result.returncode == 0 and "--gpus" in result.stdout
    result = subprocess.run([str(BIN / "lstmq-worker"), "--gpus", "a,b"], capture_output=True, text=True, env=clean_env())
    assert result.returncode == 2 and "expected GPU indices" in result.stderr
    # a GPU this machine does not have is an error, never a CPU worker calling itself gpu7
    result = subprocess.run([str(BIN / "lstmq-worker"), "--gpus", "7"], capture_output=True, text=True, env=clean_env(),
                            timeout=60)
    assert result.returncode == 2 and "no GPU 7 on this machine" in result.stderr, result.stderr
    assert time.monotonic() - started < 120   # a hang guard, not a speed assertion


def test_modules_in_the_working_directory_shadow_nothing(trained, worker, cli, shadowing_dir, tmp_path):
    """lstmq-worker, its Celery worker and pool process, and the CLI all ran in shadowing_dir,
    whose worker.py, config.py, shared/ and lstmq/ raise on import: training worked (trained),
    and so does generation."""
    children = lambda pid: [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    celery_main = children(worker.process.pid)[0]
    for pid in (worker.process.pid, celery_main, *children(celery_main)):
        assert Path(f"/proc/{pid}/cwd").resolve() == shadowing_dir.resolve()
    assert trained[0]["status"] == "succeeded"
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("the working directory holds a worker.py\n")
    out = tmp_path / "out.jsonl"
    cli("generate", seeds, "--model", "sherlock@1", "-o", out, "--words", "3")
    assert len(read_jsonl(out)[0]["continuation"].split()) == 3
    assert "was imported" not in worker.text()


def test_the_producer_imports_nothing_from_the_worker(trained, cli, tmp_path):
    """-X importtime (PYTHONPROFILEIMPORTTIME) lists every module a real `lstmq generate` run imports."""
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("a prompt for the import check\n")
    env = {**clean_env(), "PYTHONPROFILEIMPORTTIME": "1"}
    result = cli("generate", seeds, "--model", "sherlock@1", "-o", tmp_path / "out.jsonl", env=env)
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert "lstmq.producer.submit" in imported and "lstmq.shared.messages" in imported and "celery" in imported
    assert not [name for name in imported if name.startswith("lstmq.worker")]
    assert not [name for name in imported if name.split(".")[0] in ("tensorflow", "keras")]


def test_celery_tools_reach_the_fleet_through_the_module_level_app(worker, redis_server, tmp_path):
    """`celery -A lstmq.worker.app inspect ...` (and Flower) use the app that the workers run,
    configured from LSTMQ_BROKER_URL; task events are on so that monitors see lstmq's tasks."""
    env = {**clean_env(), "LSTMQ_BROKER_URL": redis_server.url}
    celery = [str(BIN / "celery"), "-A", "lstmq.worker.app"]
    ping = subprocess.run([*celery, "inspect", "ping", "--timeout", "10"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert ping.returncode == 0 and "pong" in ping.stdout and "lstmq-cpu@" in ping.stdout, ping.stdout + ping.stderr
    registered = subprocess.run([*celery, "inspect", "registered", "--timeout", "10"], capture_output=True, text=True,
                                env=env, cwd=tmp_path, timeout=120)
    assert "lstmq.train" in registered.stdout and "lstmq.generate" in registered.stdout, registered.stdout
    report = subprocess.run([*celery, "inspect", "conf", "--timeout", "10"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert '"worker_send_task_events": true' in report.stdout and '"task_acks_late": true' in report.stdout, report.stdout


def test_model_lifecycle_promote_rollback_and_remove(trained, cli, corpus_slice, redis_server, tmp_path):
    """Versions become current only when asked; aliases move by promote; a pinned version stays."""
    from lstmq.shared.config import load_settings
    from lstmq.shared.messages import JobKind

    train = lambda *flags: json.loads(cli("train", corpus_slice, "--model", "life", "--epochs", "1", "--wait",
                                          "--json", *flags).stdout)
    first = train()
    assert first["model"] == "life@1" and first["promoted"] is True
    second = train("--no-promote")
    assert second["model"] == "life@2" and second["promoted"] is False and "--no-promote" in second["promotion"]
    show = json.loads(cli("models", "show", "life", "--json").stdout)
    assert show["aliases"] == {"current": 1}
    assert show["versions"][1]["params"]["embedding_dim"] == 32 and show["versions"][1]["corpus_sha256"]
    assert "PARAMS" in cli("models", "show", "life").stdout
    # --promote-if-better compares validation perplexity on the same held-out lines
    third = train("--promote-if-better")
    versions = {row["version"]: row for row in show["versions"]}
    better = third["val_perplexity"] < versions[1]["val_perplexity"]
    assert third["promoted"] is better and ("beats" if better else "does not beat") in third["promotion"]
    current = 3 if better else 1
    assert json.loads(cli("models", "show", "life", "--json").stdout)["aliases"]["current"] == current
    # promote and roll back; any alias works as NAME@ALIAS
    assert json.loads(cli("models", "promote", "life@2", "--json").stdout) == {"model": "life@2", "alias": "current",
                                                                             "previous": current}
    cli("models", "promote", "life@1", "--alias", "stable")
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("the door opened\n")
    line = read_jsonl_one(cli, seeds, "life@stable", tmp_path)
    assert line["model"] == "life@1"
    assert read_jsonl_one(cli, seeds, "life", tmp_path)["model"] == "life@2"
    # rm: refused while an alias points at it or an unfinished job pins it
    refused = cli("models", "rm", "life@1", check=False)
    assert refused.returncode == 2 and "is stable" in refused.stderr
    cli("models", "promote", "life@2", "--alias", "stable")
    store = Store.from_url(redis_server.url, ttl=3600)
    pinning = store.jobs.create(JobKind.GENERATE, load_settings(environ={}).generation_params().replace(seed=1),
                                model_name="life", version=1, model="life@1")
    refused = cli("models", "rm", "life@1", check=False)
    assert refused.returncode == 2 and pinning in refused.stderr
    cli("cancel", pinning)
    assert cli("models", "rm", "life@1", "--json").stdout.strip() == '{"model": "life@1", "removed": true}'
    assert [row["version"] for row in json.loads(cli("models", "show", "life", "--json").stdout)["versions"]] == [2, 3]
    gone = cli("generate", seeds, "--model", "life@1", "-o", tmp_path / "gone.jsonl", check=False)
    assert gone.returncode == 1 and "has no version 1" in gone.stderr


def read_jsonl_one(cli, seeds, model, tmp_path):
    out = tmp_path / f"{model.replace('@', '-')}.jsonl"
    cli("generate", seeds, "--model", model, "-o", out)
    return read_jsonl(out)[0]


def test_workers_lists_the_live_worker_with_its_models_and_queues(trained, cli, worker):
    """Heartbeats every lease_seconds/3 (10 s): the view is at most that old."""
    def seen():
        live = json.loads(cli("workers", "--json").stdout)
        return live if live and live[0].get("chunks_done", 0) >= 1 and "sherlock@1" in live[0]["models"] else None

    live = wait_for(seen, timeout=40, interval=1, what="a heartbeat after a chunk")
    assert len(live) == 1
    entry = live[0]
    assert entry["name"].startswith("lstmq-cpu@") and entry["device"] == "cpu" and entry["gpu_name"] is None
    assert entry["gpu_index"] is None
    assert sorted(entry["queues"]) == ["generate", "train"] and entry["last_heartbeat"].endswith("Z")
    table = cli("workers").stdout
    assert "queued messages: train 0, generate 0" in table and entry["name"] in table and "sherlock@1" in table
    listing = cli("status").stdout
    assert "live workers: 1" in listing and "PACE" in listing and "words/s" in listing


def test_a_moved_alias_is_warmed_up_and_a_failed_load_is_recorded(trained, cli, worker, random_artifact, redis_server,
                                                                  tmp_path):
    """Workers load a newly promoted version before a job needs it (within a heartbeat, 10 s);
    a version that fails to load is recorded and the loaded ones go on serving."""
    from lstmq.shared.store import keys

    store = Store.from_url(redis_server.url, ttl=3600)
    register = lambda current, variant: f"warm@{register_model(store, 'warm', artifact_variant(random_artifact, variant), make_current=current)}"  # noqa: E731
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("the door opened\n")
    assert register(True, 1) == "warm@1"
    cli("generate", seeds, "--model", "warm", "-o", tmp_path / "one.jsonl")            # the worker serves warm@1
    assert register(False, 2) == "warm@2"
    cli("models", "promote", "warm@2")
    wait_for(lambda: "warmed up model warm@2" in worker.text(), timeout=40, interval=0.5, what="warm@2 to be warmed")
    assert register(False, 3) == "warm@3"
    store.redis.set(keys.blob(store.registry.meta("warm", 3)["artifact_sha256"]), b"not a model")
    cli("models", "promote", "warm@3", "--alias", "canary")
    wait_for(lambda: "could not load model warm@3" in worker.text(), timeout=40, interval=0.5, what="a failed load")
    shown = json.loads(cli("models", "show", "warm", "--json").stdout)
    failure = {row["version"]: row["load_errors"] for row in shown["versions"]}[3][0]
    assert failure["worker"].startswith("lstmq-cpu@") and "ArtifactCorrupt" in failure["reason"]
    assert "could not load on lstmq-cpu@" in cli("models", "show", "warm").stdout
    out = tmp_path / "after.jsonl"
    cli("generate", seeds, "--model", "warm", "-o", out)                              # warm@2 goes on serving
    assert read_jsonl(out)[0]["model"] == "warm@2"
