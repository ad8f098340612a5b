"""lstmq: submit training and generation jobs to lstmq workers and collect the results.

Exit status: 0 done; 1 a job failed or Redis could not be reached; 2 bad usage, settings or
input file; 3 the job finished but some seed lines or prompts could not be used (they are in
OUT.errors.jsonl)."""
from __future__ import annotations

import functools
import json
import random
import sys
from pathlib import Path
from typing import Any

import click

from lstmq.shared.errors import BrokerUnavailable, ConfigError, InputError, LstmqError

EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL = 1, 2, 3


class Failure(click.ClickException):
    exit_code = EXIT_FAILED


class BadInput(click.ClickException):
    exit_code = EXIT_USAGE


def common_options(command):
    @click.option("--config", "config_file", type=click.Path(dir_okay=False),
                  help="Settings file (YAML); also LSTMQ_CONFIG.")
    @click.option("--broker", help="Redis URL, e.g. redis://host:6379/0 (setting broker_url, LSTMQ_BROKER_URL).")
    @functools.wraps(command)
    def wrapper(*args, config_file=None, broker=None, **kwargs):
        try:
            return command(*args, config_file=config_file, broker=broker, **kwargs)
        except (ConfigError, InputError) as error:
            raise BadInput(str(error)) from None
        except LstmqError as error:   # a failed job, an unknown job or model, no broker
            raise Failure(str(error)) from None
    return wrapper


def open_store(settings):
    import redis

    from lstmq.shared.store import Store
    store = Store.from_url(settings.broker_url, settings.result_ttl)
    try:
        store.ping(settings.broker_url)
    except redis.exceptions.RedisError as error:
        raise BrokerUnavailable(f"cannot reach Redis at {settings.broker_url}: {error}") from None
    return store


def settings_for(config_file, **overrides):
    from lstmq.shared.config import load_settings
    return load_settings(config_file, overrides)


def show_progress() -> bool:
    return sys.stderr.isatty()


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lstmq")
def main():
    """Batch word-level LSTM text generation on Celery workers.

    \b
      lstmq train corpus.txt --model sherlock --wait
      lstmq generate seeds.txt --model sherlock -o out.jsonl
      lstmq status
    """


# -- train -------------------------------------------------------------------------------------
@main.command()
@click.argument("corpus", type=click.Path(dir_okay=False))
@click.option("--model", "model_name", required=True, help="Model name; each run registers the next version.")
@click.option("--epochs", type=int, help="Training epochs (setting epochs).")
@click.option("--batch-size", type=int, help="Sequences per training step (setting batch_size).")
@click.option("--learning-rate", type=float, help="Optimizer step size (setting learning_rate).")
@click.option("--wait", is_flag=True, help="Wait, showing per-epoch loss and validation perplexity.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: job, status, model.")
@common_options
def train(corpus, model_name, epochs, batch_size, learning_rate, wait, as_json, config_file, broker):
    """Upload CORPUS (UTF-8 text) and train a new version of a model on it."""
    from lstmq.shared.store import JobKind, check_model_name
    from lstmq.shared.text import words

    settings = settings_for(config_file, broker_url=broker, epochs=epochs, batch_size=batch_size,
                            learning_rate=learning_rate)
    check_model_name(model_name)
    path = Path(corpus)
    if not path.is_file():
        raise InputError(f"{corpus}: no such file")
    size = path.stat().st_size
    if size > settings.max_corpus_bytes:
        raise InputError(f"{corpus}: {size} bytes, over max_corpus_bytes ({settings.max_corpus_bytes})")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise InputError(f"{corpus}:{line}: not valid UTF-8 (byte 0x{data[error.start]:02x}); "
                         f"a corpus must be UTF-8 text") from None
    usable = sum(1 for line in text.split("\n") if len(words(line)) >= 2)
    if usable < 2:
        raise InputError(f"{corpus}: {usable} line(s) with two or more words; training needs at least 2")
    store = open_store(settings)
    digest = store.put_blob(data, ttl=settings.result_ttl)
    job_id = store.create_job(JobKind.TRAIN, settings.model_params(), model_name=model_name,
                              corpus_sha256=digest, corpus_file=path.name, epochs=settings.epochs)
    from lstmq.worker.app import TRAIN_QUEUE, TRAIN_TASK, create_app
    create_app(settings).send_task(TRAIN_TASK, kwargs={"job": job_id}, queue=TRAIN_QUEUE)
    if not wait:
        if as_json:
            echo_json({"job": job_id, "status": "queued", "model": None})
        else:
            click.echo(job_id)
        return
    from lstmq.producer.collect import wait_train
    if not as_json:
        click.echo(f"job {job_id}: training {model_name} on {path.name} ({size:,} bytes, sha256 {digest[:12]})", err=True)
    try:
        record = wait_train(store, job_id, settings.poll_interval, show_progress(), sys.stderr)
    except KeyboardInterrupt:
        stopped_waiting(job_id, f"lstmq status {job_id}")
    summary = {"job": job_id, "status": record["status"], "model": record.get("model"),
               "epochs_run": record.get("epochs_run"), "loss": record.get("loss"),
               "val_perplexity": record.get("val_perplexity")}
    if record["status"] != "succeeded":
        summary["error"] = record.get("error", "unknown error")
    if as_json:
        echo_json(summary)
    elif record["status"] == "succeeded":
        click.echo(record["model"])
    if record["status"] != "succeeded":
        raise Failure(f"training job {job_id} failed: {summary['error']}")


# -- generate ------------------------------------------------------------------------------------
@main.command()
@click.argument("seeds", type=click.Path(dir_okay=False))
@click.option("--model", "model_spec", required=True, help="NAME (its current version) or NAME@VERSION.")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), help="Output JSONL (required unless --detach).")
@click.option("--words", type=int, help="Words to generate per prompt.")
@click.option("--temperature", type=float, help="0 = greedy; > 0 samples.")
@click.option("--top-k", type=int, help="Sample among the K most likely words (0 = off).")
@click.option("--top-p", type=float, help="Nucleus sampling threshold (1 = off).")
@click.option("--n", "samples", type=int, help="Samples per prompt.")
@click.option("--seed", type=int, help="Random seed (default: a fresh one, recorded in the output).")
@click.option("--chunk-size", type=int, help="Prompts per task.")
@click.option("--detach", is_flag=True, help="Submit, print the job id and return; collect later.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@common_options
def generate(seeds, model_spec, output, words, temperature, top_k, top_p, samples, seed, chunk_size, detach,
             as_json, config_file, broker):
    """Continue every prompt of SEEDS (.txt: a prompt per line; .jsonl: {"id", "prompt", ...})."""
    from lstmq.producer.seeds import check_path
    settings = settings_for(config_file, broker_url=broker, words=words, temperature=temperature, top_k=top_k,
                            top_p=top_p, n=samples, seed=seed, chunk_size=chunk_size)
    if output is None and not detach:
        raise click.UsageError("missing -o/--output OUT.jsonl (or use --detach and `lstmq collect` later)")
    check_path(seeds)
    store = open_store(settings)
    name, version = store.resolve_model(model_spec)
    job_id, counts, errors = submit_generate(store, settings, seeds, name, version, output)
    for error in errors[:20]:
        click.echo(f"lstmq: {error}", err=True)
    if len(errors) > 20:
        click.echo(f"lstmq: ... and {len(errors) - 20} more bad lines", err=True)
    if detach:
        if as_json:
            echo_json({"job": job_id, "model": f"{name}@{version}", **counts})
        else:
            click.echo(job_id)
        if errors and output:
            click.echo(f"lstmq: {len(errors)} bad line(s) written to {_errors_file(output)}", err=True)
        if errors:
            sys.exit(EXIT_PARTIAL)
        return
    if not as_json:
        click.echo(f"job {job_id}: {counts['prompts']} prompts with {name}@{version}", err=True)
    collect_job(store, settings, job_id, output, as_json)


def _errors_file(output) -> str:
    from lstmq.producer.collect import errors_path
    return str(errors_path(output))


def submit_generate(store, settings, seeds, name, version, output):
    """Stream the seed file into chunks (tasks are sent as chunks fill, so workers start early)."""
    from lstmq.producer.seeds import Seed, read_seeds
    from lstmq.shared.store import JobKind
    from lstmq.worker.app import GENERATE_QUEUE, GENERATE_TASK, create_app

    defaults = settings.generation_params()
    if defaults["seed"] is None:
        defaults["seed"] = random.SystemRandom().randrange(2**31)
    limits = {key: settings.values[key] for key in ("max_words", "max_n", "max_prompt_chars", "max_line_bytes")}
    job_id = store.create_job(JobKind.GENERATE, defaults, model_name=name, version=version, model=f"{name}@{version}",
                              seeds_file=Path(seeds).name)
    app = create_app(settings)
    errors, chunk, chunks, prompts, lines = [], [], 0, 0, 0

    def flush(producer):
        nonlocal chunk, chunks
        store.put_chunk(job_id, chunks, chunk)
        app.send_task(GENERATE_TASK, kwargs={"job": job_id, "chunk": chunks}, queue=GENERATE_QUEUE, producer=producer)
        chunks += 1
        chunk = []

    with app.producer_or_acquire() as producer:
        for entry in read_seeds(seeds, defaults, limits):
            lines += 1
            if isinstance(entry, Seed):
                chunk.append(entry.item())
                prompts += 1
                if len(chunk) >= settings.chunk_size:
                    flush(producer)
            else:
                errors.append(entry)
        if chunk:
            flush(producer)
    store.add_input_errors(job_id, [error.record() for error in errors])
    store.finish_submission(job_id, chunks=chunks, prompts=prompts, input_errors=len(errors), lines=lines)
    if output and errors:
        from lstmq.producer.collect import errors_path
        with open(errors_path(output), "w", encoding="utf-8") as stream:
            for error in errors:
                stream.write(json.dumps(error.record(), ensure_ascii=False) + "\n")
    return job_id, {"prompts": prompts, "bad_lines": len(errors), "chunks": chunks, "seed": defaults["seed"]}, errors


def stopped_waiting(job_id: str, how: str) -> None:
    click.echo(f"\nlstmq: stopped waiting; job {job_id} goes on in the workers ({how})", err=True)
    sys.exit(130)


def collect_job(store, settings, job_id, output, as_json):
    from lstmq.producer.collect import errors_path, wait_generate, write_results
    record = store.job(job_id)
    if record.get("kind") != "generate":
        raise InputError(f"job {job_id} is a {record.get('kind')} job; only generate jobs have output to collect")
    try:
        record = wait_generate(store, job_id, settings.poll_interval, show_progress() and not as_json)
    except KeyboardInterrupt:
        stopped_waiting(job_id, f"lstmq collect {job_id} -o {output}")
    written, errors = write_results(store, job_id, output)
    summary = {"job": job_id, "status": record["status"], "model": record["model"], "output": str(output),
               "lines": written, "prompts": record.get("prompts", 0), "errors": len(errors),
               "words": record.get("words_done", 0)}
    if errors:
        summary["errors_file"] = str(errors_path(output))
    seconds = max(record.get("finished", 0) - record.get("created", 0), 0)
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"wrote {written} lines to {output} ({record.get('words_done', 0):,} words in {seconds:.1f}s)"
                   + (f"; {len(errors)} error(s) in {summary['errors_file']}" if errors else ""), err=True)
    if record["status"] == "failed":
        sys.exit(EXIT_FAILED)
    if errors:
        sys.exit(EXIT_PARTIAL)


@main.command()
@click.argument("job")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output JSONL.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@common_options
def collect(job, output, as_json, config_file, broker):
    """Wait for generate job JOB and write its results to OUTPUT (can be run again any time)."""
    settings = settings_for(config_file, broker_url=broker)
    collect_job(open_store(settings), settings, job, output, as_json)


# -- status --------------------------------------------------------------------------------------
@main.command()
@click.argument("job", required=False)
@click.option("--limit", default=20, show_default=True, help="Jobs listed without JOB.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@common_options
def status(job, limit, as_json, config_file, broker):
    """Show one job, or the most recent jobs."""
    settings = settings_for(config_file, broker_url=broker)
    store = open_store(settings)
    if job:
        record = store.job(job)
        if record.get("kind") == "train":
            record["history"] = store.history(job)
        if as_json:
            echo_json(record)
            return
        history = record.pop("history", [])
        for key in sorted(record):
            value = json.dumps(record[key]) if isinstance(record[key], dict) else record[key]
            click.echo(f"{key:>16}: {value}")
        for entry in history:
            perplexity = f", val ppl {entry['val_perplexity']:.2f}" if "val_perplexity" in entry else ""
            click.echo(f"{'epoch ' + str(entry['epoch']):>16}: loss {entry['loss']:.4f}{perplexity} ({entry['seconds']:.1f}s)")
        return
    records = [store.job(job_id) for job_id in store.job_ids(limit)]
    if as_json:
        echo_json(records)
        return
    click.echo(f"{'JOB':<17}{'KIND':<9}{'STATUS':<10}{'MODEL':<22}PROGRESS")
    for record in records:
        click.echo(f"{record['id']:<17}{record['kind']:<9}{record['status']:<10}"
                   f"{record.get('model') or record.get('model_name', ''):<22}{_progress(record)}")


def _progress(record: dict[str, Any]) -> str:
    if record["kind"] == "train":
        text = f"epoch {record.get('epoch', 0)}/{record['params']['epochs']}"
        if "val_perplexity" in record:
            text += f", val ppl {record['val_perplexity']:.2f}"
        return text
    return f"{record.get('prompts_done', 0)}/{record.get('prompts', '?')} prompts, {record.get('words_done', 0)} words"


# -- models --------------------------------------------------------------------------------------
@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("args", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@common_options
def models(args, as_json, config_file, broker):
    """List models, show one model's versions, or export a version.

    \b
      lstmq models                     every model name
      lstmq models NAME                NAME's versions
      lstmq models export NAME@V DIR   write model.keras, vocab.json, meta.json into DIR
    """
    settings = settings_for(config_file, broker_url=broker)
    if args and args[0] == "export":
        if len(args) != 3:
            raise click.UsageError("usage: lstmq models export NAME@VERSION DIR")
        from lstmq.shared.model import export_artifact
        store = open_store(settings)
        name, version = store.resolve_model(args[1])
        written = export_artifact(store.model_artifact(name, version), args[2])
        if as_json:
            echo_json({"model": f"{name}@{version}", "files": [str(path) for path in written]})
        else:
            for path in written:
                click.echo(str(path))
        return
    if len(args) > 1:
        raise click.UsageError("usage: lstmq models [NAME] | lstmq models export NAME@VERSION DIR")
    store = open_store(settings)
    if args:
        name = args[0]
        store.resolve_model(name)   # raises a clear error for an unknown name
        versions, aliases = store.model_versions(name), store.aliases(name)
        rows = [_version_row(name, version, meta, aliases) for version, meta in versions.items()]
        if as_json:
            echo_json({"name": name, "aliases": aliases, "versions": rows})
            return
        click.echo(f"{'MODEL':<24}{'EPOCHS':>7}{'VAL PPL':>10}{'VOCAB':>8}  {'CORPUS':<14}{'CREATED':<27}ALIASES")
        for row in rows:
            click.echo(f"{row['model']:<24}{row['epochs_run'] or 0:>7}{_number(row['val_perplexity']):>10}"
                       f"{row['vocab_size']:>8}  {row['corpus_sha256'][:12]:<14}{row['created']:<27}{','.join(row['aliases'])}")
        return
    rows = []
    for name in store.model_names():
        versions, aliases = store.model_versions(name), store.aliases(name)
        rows.append({"name": name, "versions": len(versions), "current": aliases.get("current"),
                     "latest": max(versions) if versions else None})
    if as_json:
        echo_json(rows)
        return
    click.echo(f"{'NAME':<24}{'VERSIONS':>9}{'CURRENT':>9}")
    for row in rows:
        click.echo(f"{row['name']:<24}{row['versions']:>9}{row['current'] or '-':>9}")


def _version_row(name: str, version: int, meta: dict[str, Any], aliases: dict[str, int]) -> dict[str, Any]:
    metrics = meta.get("metrics", {})
    return {"model": f"{name}@{version}", "version": version, "created": meta.get("created", ""),
            "epochs_run": metrics.get("epochs_run"), "val_perplexity": metrics.get("val_perplexity"),
            "loss": metrics.get("loss"), "vocab_size": meta.get("network", {}).get("vocab_size", 0),
            "corpus_sha256": meta.get("corpus_sha256", ""), "job": meta.get("job"),
            "aliases": sorted(alias for alias, target in aliases.items() if target == version)}


def _number(value) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    main()
