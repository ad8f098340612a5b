"""lstmq: submit training and generation jobs to lstmq workers and collect the results.

Click commands only: submission is producer.submit, waiting and output files producer.collect,
what is shown producer.render. Nothing here (or there) imports TensorFlow or lstmq.worker.

Exit status: 0 done; 1 a job failed, or Redis could not be reached or was refused; 2 bad usage,
settings or input file (a seed file with no usable line too); 3 the job finished but some seed lines or prompts could not be used
(they are in OUT.errors.jsonl); 4 --timeout passed while waiting (the job goes on); 5 the job
was cancelled; 130 stopped waiting on Ctrl-C (the job goes on)."""
from __future__ import annotations

import functools
import sys

import click

from lstmq.shared.errors import ConfigError, InputError, LstmqError

EXIT_FAILED, EXIT_USAGE, EXIT_PARTIAL, EXIT_TIMEOUT, EXIT_CANCELLED, EXIT_INTERRUPTED = 1, 2, 3, 4, 5, 130
SHOWN_BAD_LINES = 20


class Failure(click.ClickException):
    exit_code = EXIT_FAILED


class BadInput(click.ClickException):
    exit_code = EXIT_USAGE


class TimedOut(click.ClickException):
    exit_code = EXIT_TIMEOUT


def timeout_option(command):
    return click.option("--timeout", type=click.FloatRange(min=0), metavar="SECONDS",
                        help=f"Stop waiting after this long (exit status {EXIT_TIMEOUT}; the job goes on).")(command)


def common_options(command):
    @click.option("--config", "config_file", type=click.Path(dir_okay=False),
                  help="Settings file (YAML); also LSTMQ_CONFIG.")
    @click.option("--broker", help="Redis URL, e.g. redis://host:6379/0 (setting broker_url, LSTMQ_BROKER_URL).")
    @functools.wraps(command)
    def wrapper(*args, config_file=None, broker=None, **kwargs):
        try:
            return command(*args, config_file=config_file, broker=broker, **kwargs)
        except click.ClickException as error:
            if kwargs.get("as_json"):   # --json: the failure is a JSON object too
                from lstmq.producer import render
                render.echo_json({"error": error.format_message(), "exit_status": error.exit_code})
                sys.exit(error.exit_code)
            raise
    return wrapper


def lstmq_errors(command):
    """lstmq's errors as click exceptions with the documented exit statuses (inside common_options)."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import redis

        from lstmq.producer.collect import WaitTimeout
        from lstmq.shared.redact import redact
        from lstmq.shared.store.health import is_out_of_memory
        try:
            return command(*args, **kwargs)
        except (ConfigError, InputError) as error:
            raise BadInput(redact(str(error))) from None
        except WaitTimeout as error:
            raise TimedOut(str(error)) from None
        except LstmqError as error:   # a failed job, an unknown job or model, no broker
            raise Failure(redact(str(error))) from None
        except redis.exceptions.RedisError as error:   # Redis went away, or refused a write
            if is_out_of_memory(error):
                raise Failure(f"Redis is out of memory: {error} (free memory or raise maxmemory)") from None
            raise Failure(f"Redis error: {redact(str(error))}") from None
    return wrapper


def settings_for(config_file, **overrides):
    from lstmq.shared.config import load_settings
    return load_settings(config_file, overrides)


def open_store(settings):
    """The store, once Redis answered and its eviction policy is safe (see allow_eviction)."""
    from lstmq.shared.store import Store
    from lstmq.shared.store.health import check_eviction_policy
    store = Store.from_settings(settings)
    store.ping(settings.broker_url)
    check_eviction_policy(store.redis, settings.allow_eviction)
    return store


def dispatcher_for(settings):
    from lstmq.shared.messages import Dispatcher
    return Dispatcher(settings)


def show_progress() -> bool:
    return sys.stderr.isatty()


def stopped_waiting(job_id: str, how: str) -> None:
    click.echo(f"\nlstmq: stopped waiting; job {job_id} goes on in the workers ({how})", err=True)
    sys.exit(EXIT_INTERRUPTED)


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
@click.option("--layers", "--lstm-layers", "layers", type=int,
              help="Stacked LSTM layers, 1 = the seed's network (setting lstm_layers).")
@click.option("--dropout", type=float,
              help="Fraction of the LSTM layers' inputs and outputs dropped while training, 0 = off (setting dropout).")
@click.option("--clipnorm", type=float, help="Clip the gradient's global norm to this, 0 = off (setting clipnorm).")
@click.option("--no-promote", "promote", flag_value="never",
              help="Register the new version without making it current.")
@click.option("--promote-if-better", "promote", flag_value="if-better",
              help="Make it current only if its validation perplexity beats the current version's on the same "
                   "held-out lines.")
@click.option("--wait", is_flag=True, help="Wait, showing per-epoch loss and validation perplexity.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: job, status, model.")
@timeout_option
@common_options
@lstmq_errors
def train(corpus, model_name, epochs, batch_size, learning_rate, layers, dropout, clipnorm, promote, wait, as_json,
          timeout, config_file, broker):
    """Upload CORPUS (UTF-8 text) and train a new version of a model on it (by default the
    new version becomes the model's current one)."""
    from lstmq.producer import render
    from lstmq.producer.submit import read_corpus, submit_train
    from lstmq.shared.store import check_model_name

    settings = settings_for(config_file, broker_url=broker, epochs=epochs, batch_size=batch_size,
                            learning_rate=learning_rate, lstm_layers=layers, dropout=dropout, clipnorm=clipnorm)
    check_model_name(model_name)
    data = read_corpus(corpus, settings)   # a bad corpus is reported before Redis is needed
    store = open_store(settings)
    submission = submit_train(store, dispatcher_for(settings), settings, corpus, model_name, data,
                              promote=promote or "always")
    job_id = submission.job
    if not wait:
        if as_json:
            render.echo_json(train_json(store.jobs.get(job_id)))
        else:
            click.echo(job_id)
        return
    from lstmq.producer.collect import wait as wait_for_job
    if not as_json:
        click.echo(f"job {job_id}: training {model_name} on {submission.corpus_file} ({submission.corpus_bytes:,} "
                   f"bytes, sha256 {submission.corpus_sha256[:12]})", err=True)
    try:
        record = wait_for_job(store, job_id, settings, show_progress(), dispatcher_for(settings), timeout)
    except KeyboardInterrupt:
        stopped_waiting(job_id, f"lstmq status {job_id}")
    summary = train_json(record)
    if as_json:
        render.echo_json(summary)
    elif record.status.value == "succeeded":
        click.echo(record.model)
        if record.promotion:
            click.echo(f"lstmq: {record.model} {record.promotion}", err=True)
    if record.status.value == "cancelled":
        click.echo(f"lstmq: training job {job_id} was cancelled", err=True)
        sys.exit(EXIT_CANCELLED)
    if record.status.value == "failed":
        click.echo(f"lstmq: training job {job_id} failed: {summary['error']}", err=True)
        sys.exit(EXIT_FAILED)


def train_json(record) -> dict:
    """The keys every train summary has, waiting or not (None until known)."""
    failed = record.status.value == "failed"
    return {"job": record.id, "status": record.status.value, "model": record.model, "epochs_run": record.epochs_run,
            "loss": record.loss, "val_perplexity": record.val_perplexity, "promoted": record.promoted,
            "promotion": record.promotion, "error": (record.error or "unknown error") if failed else None}


# -- generate ------------------------------------------------------------------------------------
@main.command()
@click.argument("seeds", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--model", "model_spec", required=True, help="NAME (its current version), NAME@VERSION or NAME@ALIAS.")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False, allow_dash=True),
              help="Output JSONL, - for standard output (required unless --detach or --dry-run).")
@click.option("--format", "fmt", type=click.Choice(["txt", "jsonl"]),
              help="Seed format when the suffix does not say (standard input: txt).")
@click.option("--words", type=int, help="Words to generate per prompt.")
@click.option("--temperature", type=float, help="0 = greedy; > 0 samples.")
@click.option("--top-k", type=int, help="Sample among the K most likely words (0 = off).")
@click.option("--top-p", type=float, help="Nucleus sampling threshold (1 = off).")
@click.option("--n", "samples", type=int, help="Samples per prompt.")
@click.option("--seed", type=int, help="Random seed (default: a fresh one, recorded in the output).")
@click.option("--chunk-size", type=int, help="Prompts per task.")
@click.option("--detach", is_flag=True, help="Submit, print the job id and return; collect later.")
@click.option("--dry-run", is_flag=True, help="Check every line against the model version; submit nothing.")
@click.option("--stats", is_flag=True, help="Print the distribution of the lines' logprob (mean log-probability per word).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@timeout_option
@common_options
@lstmq_errors
def generate(seeds, model_spec, output, fmt, words, temperature, top_k, top_p, samples, seed, chunk_size, detach,
             dry_run, stats, as_json, timeout, config_file, broker):
    """Continue every prompt of SEEDS (.txt: a prompt per line; .jsonl: {"id", "prompt", ...};
    - reads standard input)."""
    from lstmq.producer import render
    from lstmq.producer.seeds import check_path
    from lstmq.producer.submit import NoPrompts, submit_generate

    settings = settings_for(config_file, broker_url=broker, words=words, temperature=temperature, top_k=top_k,
                            top_p=top_p, n=samples, seed=seed, chunk_size=chunk_size)
    if output is None and not (detach or dry_run):
        raise click.UsageError("missing -o/--output OUT.jsonl (or use --detach and `lstmq collect` later)")
    if output == "-" and detach:
        raise click.UsageError("-o - writes the results as they are collected: it does not go with --detach")
    check_path(seeds, fmt)
    store = open_store(settings)
    if dry_run:
        return preview(store, settings, seeds, model_spec, fmt, output, as_json)

    def created(job_id: str) -> None:   # before the first chunk goes out: the id is never lost
        click.echo(f"lstmq: job {job_id}: submitting {seeds} to {model_spec}", err=True)

    try:
        submission = submit_generate(store, dispatcher_for(settings), settings, seeds, model_spec, created, fmt)
    except NoPrompts as error:
        report_bad_lines(error.submission.bad_lines, output)
        raise
    bad_lines = submission.bad_lines
    if detach:   # else they are shown with the workers' bad lines as the chunks are collected
        report_bad_lines(bad_lines, None)
    click.echo(f"lstmq: job {submission.job}: {submission.lines:,} lines in {submission.chunks:,} chunk(s) sent; "
               f"the workers check them", err=True)
    if detach:
        if as_json:
            render.echo_json({**submission_json(submission, store), "output": output, "errors_file": None})
        else:
            click.echo(submission.job)
        if bad_lines:
            sys.exit(EXIT_PARTIAL)
        return
    if not as_json:
        click.echo(f"job {submission.job}: {submission.lines:,} lines with {submission.model}", err=True)
    collect_job(store, settings, submission.job, output, as_json, timeout, stats)


def errors_path_for(output):
    from lstmq.producer.collect import errors_path
    return None if output in (None, "-") else errors_path(output)


def report_bad_lines(bad_lines, output) -> None:
    """Bad seed lines on stderr (the first SHOWN_BAD_LINES), and in OUT.errors.jsonl when `output`."""
    from lstmq.producer.collect import write_errors

    for bad_line in bad_lines[:SHOWN_BAD_LINES]:
        click.echo(f"lstmq: {bad_line}", err=True)
    if len(bad_lines) > SHOWN_BAD_LINES:
        click.echo(f"lstmq: ... and {len(bad_lines) - SHOWN_BAD_LINES} more bad lines", err=True)
    if bad_lines and errors_path_for(output) is not None:
        written = write_errors(output, [bad_line.record() for bad_line in bad_lines])
        click.echo(f"lstmq: {len(bad_lines)} bad line(s) written to {written}", err=True)


def submission_json(submission, store=None) -> dict:
    """The keys every generate summary has (--detach, --dry-run and waiting alike). `check`: the
    seed report (a dry run's, or the workers' so far: "complete" says whether every line was read)."""
    record = store.jobs.get(submission.job) if store is not None and submission.job else None
    if record is not None:
        check = record.seed_report(store.jobs.top_unknown_words(submission.job))
        prompts, bad = record.prompts, record.input_errors
    else:
        check = submission.report.to_json() if submission.report else None
        prompts, bad = submission.prompts, len(submission.bad_lines)
    return {"job": submission.job, "status": record.status.value if record is not None else None,
            "model": submission.model, "lines": submission.lines, "prompts": prompts, "bad_lines": bad,
            "chunks": submission.chunks, "seed": submission.seed, "check": check}


def preview(store, settings, seeds, model_spec, fmt, output, as_json) -> None:
    """--dry-run: what the job would do, and nothing sent. Every line is checked in this process
    (the slow path: a real run leaves that to the workers)."""
    from lstmq.producer import render
    from lstmq.producer.submit import dry_run

    if not as_json:
        click.echo("lstmq: dry run: checking every line here, as the workers would (the slow path: "
                   "a real run leaves this to the workers)", err=True)
    submission = dry_run(store, settings, seeds, model_spec, fmt)
    report_bad_lines(submission.bad_lines, output)
    if as_json:
        render.echo_json({**submission_json(submission), "status": "dry-run", "output": output,
                          "errors_file": str(errors_path_for(output)) if submission.bad_lines and output else None})
    else:
        click.echo(f"dry run with {submission.model}: {submission.report.describe()}")
    if submission.prompts == 0:
        sys.exit(EXIT_USAGE)
    if submission.bad_lines:
        sys.exit(EXIT_PARTIAL)


def collect_job(store, settings, job_id, output, as_json, timeout=None, stats=False):
    from lstmq.producer import render
    from lstmq.producer.collect import Output, wait
    from lstmq.producer.render import describe_report
    from lstmq.shared.store import JobKind, JobStatus

    record = store.jobs.get(job_id)
    if record.kind is not JobKind.GENERATE:
        raise InputError(f"job {job_id} is a {record.kind.value} job; only generate jobs have output to collect")
    shown = [0]

    def show_error(error: dict) -> None:   # the first bad lines, as the workers found them
        shown[0] += 1
        where = f"{record.seeds_file}:{error['line']}" if error.get("line") is not None else f"job {job_id}"
        click.echo(f"lstmq: {where}: {error['error']}", err=True)

    writer = Output(store, job_id, output, settings, on_error=show_error,
                    wants_errors=lambda: shown[0] < SHOWN_BAD_LINES)   # lines are written as chunks finish, in input order
    try:
        try:
            record = wait(store, job_id, settings, show_progress() and not as_json, dispatcher_for(settings), timeout,
                          on_poll=writer.advance)
        except KeyboardInterrupt:
            stopped_waiting(job_id, f"lstmq collect {job_id} -o {output}")
        result = writer.finish(record)
    except BaseException:
        writer.abort()   # OUT stays as it was; the partial file goes
        raise
    written, errors = result.lines, result.errors
    errors_file = errors_path_for(output) if errors else None
    check = record.seed_report(store.jobs.top_unknown_words(job_id))
    summary = {"job": job_id, "status": record.status.value, "model": record.model, "output": str(output),
               "lines": written, "prompts": record.prompts, "bad_lines": record.input_errors, "errors": errors,
               "errors_file": str(errors_file) if errors_file else None, "words": record.words_done,
               "seconds": round(record.seconds, 3), "logprob": result.logprob_stats(), "check": check,
               "error": render.failure_summary(record, store.jobs.failed_chunks(job_id))
               if record.status is JobStatus.FAILED else None}
    if as_json:
        render.echo_json(summary, sys.stderr if output == "-" else None)
    else:
        if shown[0] >= SHOWN_BAD_LINES and errors > shown[0]:
            click.echo(f"lstmq: ... and {errors - shown[0]} more error(s)", err=True)
        click.echo(f"lstmq: job {job_id}: {describe_report(check)}", err=True)
        where = f"; {errors} error(s) in {errors_file}" if errors_file else (
            f"; {errors} error(s) (above)" if errors else "")
        click.echo(f"wrote {written} lines to {'standard output' if output == '-' else output} "
                   f"({record.words_done:,} words in {record.seconds:.1f}s){where}", err=True)
        if stats and summary["logprob"]:
            click.echo(render.logprob_text(summary["logprob"]), err=True)
    if record.status is JobStatus.CANCELLED:
        click.echo(f"lstmq: job {job_id} was cancelled", err=True)
        sys.exit(EXIT_CANCELLED)
    if record.status is JobStatus.FAILED:
        click.echo(f"lstmq: job {job_id} failed: {summary['error']}", err=True)
        no_usable_line = (record.submitted and record.chunks_done == record.chunks and not record.prompts)   # the input's fault
        sys.exit(EXIT_USAGE if no_usable_line else EXIT_FAILED)
    if errors:
        sys.exit(EXIT_PARTIAL)


@main.command()
@click.argument("job")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="Output JSONL, - for standard output.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
@timeout_option
@common_options
@lstmq_errors
def collect(job, output, as_json, timeout, config_file, broker):
    """Wait for generate job JOB and write its results to OUTPUT (can be run again any time)."""
    settings = settings_for(config_file, broker_url=broker)
    collect_job(open_store(settings), settings, job, output, as_json, timeout)


@main.command("wait")
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Print the job's final record as JSON.")
@timeout_option
@common_options
@lstmq_errors
def wait_command(job, as_json, timeout, config_file, broker):
    """Wait until JOB ends; exit 0 succeeded, 1 failed, 5 cancelled, 4 on --timeout."""
    from lstmq.producer import render
    from lstmq.producer.collect import wait
    from lstmq.shared.store import JobStatus

    settings = settings_for(config_file, broker_url=broker)
    store = open_store(settings)
    try:
        record = wait(store, job, settings, show_progress() and not as_json, dispatcher_for(settings), timeout)
    except KeyboardInterrupt:
        stopped_waiting(job, f"lstmq wait {job}")
    if as_json:
        render.echo_json(record.to_json())
    else:
        click.echo(f"job {job}: {record.status.value}" + (f" ({record.error})" if record.error else ""))
    sys.exit({JobStatus.SUCCEEDED: 0, JobStatus.CANCELLED: EXIT_CANCELLED}.get(record.status, EXIT_FAILED))


@main.command()
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help="Print {job, status} as JSON.")
@common_options
@lstmq_errors
def cancel(job, as_json, config_file, broker):
    """Cancel JOB: workers skip its pending chunks (a running chunk or epoch finishes); what was
    produced stays collectable. A job that has ended keeps its status."""
    from lstmq.producer import render

    store = open_store(settings_for(config_file, broker_url=broker))
    status = store.jobs.cancel(job)
    if as_json:
        render.echo_json({"job": job, "status": status.value})
    else:
        click.echo(f"job {job}: {status.value}")


@main.command()
@click.argument("jobs", nargs=-1, required=True, metavar="JOB...")
@click.option("--json", "as_json", is_flag=True, help="Print [{job, keys}] as JSON.")
@common_options
@lstmq_errors
def rm(jobs, as_json, config_file, broker):
    """Delete ended jobs and everything they kept in Redis (inputs, results, history)."""
    from lstmq.producer import render

    store = open_store(settings_for(config_file, broker_url=broker))
    removed = [{"job": job, "keys": store.jobs.remove(job)} for job in jobs]
    if as_json:
        render.echo_json(removed)
    else:
        for entry in removed:
            click.echo(f"job {entry['job']}: removed ({entry['keys']} keys)")


# -- status --------------------------------------------------------------------------------------
@main.command()
@click.argument("job", required=False)
@click.option("--limit", default=20, show_default=True, help="Jobs listed without JOB.")
@click.option("--json", "as_json", is_flag=True, help="JSON output (timestamps in ISO 8601, UTC).")
@common_options
@lstmq_errors
def status(job, limit, as_json, config_file, broker):
    """Show one job, or the most recent jobs."""
    from lstmq.producer import render
    from lstmq.shared.errors import JobNotFound
    from lstmq.shared.store import JobKind

    store = open_store(settings_for(config_file, broker_url=broker))
    if job:   # a read: a lapsed submission is failed by the workers' watchdogs (or a waiting CLI)
        record = store.jobs.get(job)
        history = store.training.history(job) if record.kind is JobKind.TRAIN else []
        failed, leases, attempts = store.jobs.failed_chunks(job), store.jobs.leases(job), store.jobs.attempts(job)
        report = record.seed_report(store.jobs.top_unknown_words(job)) if record.kind is JobKind.GENERATE else None
        if as_json:
            extra = {"history": history} if record.kind is JobKind.TRAIN else {"check": report}
            render.echo_json({**record.to_json(), **extra, "failed_chunks": {str(k): v for k, v in failed.items()},
                              "running": sorted(leases), "attempts": attempts})
        else:
            click.echo(render.job_details(record, history, failed, leases, attempts, report))
        return
    records = []
    for job_id in store.jobs.recent(limit):
        try:
            records.append(store.jobs.get(job_id))
        except JobNotFound:   # expired since the index said otherwise
            continue
    if as_json:
        render.echo_json([record.to_json() for record in records])
    else:
        from lstmq.shared.messages import QUEUES
        click.echo(f"{render.queues_line(store.queues.report(QUEUES))}; live workers: {len(store.workers.live())}")
        stalled = {record.id: len(store.jobs.lapsed(record.id)) for record in records if not record.status.finished}
        click.echo(render.job_table(records, stalled))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="A JSON list, one object per live worker.")
@common_options
@lstmq_errors
def workers(as_json, config_file, broker):
    """Live workers: name, host, device, queues, loaded models, current work, chunks done,
    last heartbeat; and the depth of each queue."""
    from lstmq.producer import render
    from lstmq.shared.messages import QUEUES

    store = open_store(settings_for(config_file, broker_url=broker))
    live = store.workers.live()
    if as_json:
        render.echo_json([render.worker_json(worker) for worker in live])
    else:
        click.echo(render.workers_table(live, store.queues.report(QUEUES)))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="A JSON list, one object per queue.")
@click.option("--newest", default=5, show_default=True, type=click.IntRange(0, 1000),
              help="How many of the newest dead-lettered entries to show per queue.")
@click.option("--purge-dead-letters", is_flag=True, help="Then delete the dead-letter lists.")
@common_options
@lstmq_errors
def queues(as_json, newest, purge_dead_letters, config_file, broker):
    """The Celery queues: messages waiting, live workers consuming each, and the dead-letter
    lists (entries on a queue that could not be decoded, which workers set aside)."""
    from lstmq.producer import render
    from lstmq.shared.messages import QUEUES

    store = open_store(settings_for(config_file, broker_url=broker))
    report = store.queues.report(QUEUES, newest)
    if purge_dead_letters:
        for queue in report:
            queue["purged"] = store.queues.purge_dead_letters(queue["queue"])
    if as_json:
        render.echo_json(report)
        return
    click.echo(render.queues_table(report))
    if purge_dead_letters:
        click.echo(f"purged {sum(queue['purged'] for queue in report)} dead-lettered entries")


# -- models --------------------------------------------------------------------------------------
class ModelsGroup(click.Group):
    """`lstmq models` runs `list`; `lstmq models NAME` is short for `lstmq models show NAME`."""

    def parse_args(self, ctx, args):
        if not args or (args[0].startswith("-") and args[0] not in ctx.help_option_names):
            args = ["list", *args]
        elif args[0] not in self.commands and not args[0].startswith("-"):
            args = ["show", *args]
        return super().parse_args(ctx, args)


@main.group(cls=ModelsGroup)
def models():
    """The model registry: list models, show one model's versions, export a version.

    \b
      lstmq models [list]                 every model name
      lstmq models show NAME              NAME's versions (also: lstmq models NAME)
      lstmq models export NAME@V DIR      write model.keras, vocab.json, meta.json into DIR
      lstmq models promote NAME@V         make it current (--alias A for another alias)
      lstmq models rm NAME@V              delete a version no job pins
    """


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@common_options
@lstmq_errors
def models_list(as_json, config_file, broker):
    """Every model name, its number of versions and its current version."""
    from lstmq.producer import render

    registry = open_store(settings_for(config_file, broker_url=broker)).registry
    rows = []
    for name in registry.names():
        versions, aliases = registry.versions(name), registry.aliases(name)
        rows.append({"name": name, "versions": len(versions), "current": aliases.get("current"),
                     "latest": max(versions) if versions else None})
    if as_json:
        render.echo_json(rows)
    else:
        click.echo(render.models_table(rows))


@models.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@common_options
@lstmq_errors
def models_show(name, as_json, config_file, broker):
    """NAME's versions: epochs, validation perplexity, vocabulary, corpus, aliases."""
    from lstmq.producer import render

    registry = open_store(settings_for(config_file, broker_url=broker)).registry
    registry.resolve(name)   # a clear error for an unknown name
    versions, aliases, failures = registry.versions(name), registry.aliases(name), registry.load_failures(name)
    rows = [{**render.version_row(name, version, meta, aliases),
             "load_errors": [render.load_failure_json(failure) for failure in failures.get(version, [])]}
            for version, meta in versions.items()]
    if as_json:
        render.echo_json({"name": name, "aliases": aliases, "versions": rows})
    else:
        click.echo(render.versions_table(rows))


@models.command("promote")
@click.argument("spec", metavar="NAME@VERSION")
@click.option("--alias", default="current", show_default=True, help="The alias to point at the version.")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@common_options
@lstmq_errors
def models_promote(spec, alias, as_json, config_file, broker):
    """Point an alias (default: current) at a version; a rollback is a promote of an older one.
    Jobs then take NAME@ALIAS (NAME alone means NAME@current)."""
    from lstmq.producer import render

    registry = open_store(settings_for(config_file, broker_url=broker)).registry
    name, version = registry.resolve(spec)
    before = registry.promote(name, version, alias)
    if as_json:
        render.echo_json({"model": f"{name}@{version}", "alias": alias, "previous": before})
    else:
        was = f" (was {name}@{before})" if before and before != version else ""
        click.echo(f"{name}@{alias} -> {name}@{version}{was}")


@models.command("rm")
@click.argument("spec", metavar="NAME@VERSION")
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@common_options
@lstmq_errors
def models_rm(spec, as_json, config_file, broker):
    """Delete a version and its artifact (refused while a job that has not ended pins it, or an
    alias points at it and other versions remain)."""
    from lstmq.producer import render

    store = open_store(settings_for(config_file, broker_url=broker))
    name, version = store.registry.resolve(spec)
    store.registry.remove(name, version, pinned_by=store.jobs.pinning(name, version))
    if as_json:
        render.echo_json({"model": f"{name}@{version}", "removed": True})
    else:
        click.echo(f"removed {name}@{version}")


@models.command("export")
@click.argument("spec", metavar="NAME@VERSION")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
@common_options
@lstmq_errors
def models_export(spec, directory, as_json, config_file, broker):
    """Write a version's model.keras, vocab.json and meta.json into DIRECTORY."""
    from lstmq.producer import render
    from lstmq.shared.artifact import export_artifact

    registry = open_store(settings_for(config_file, broker_url=broker)).registry
    name, version = registry.resolve(spec)
    written = export_artifact(registry.artifact(name, version), directory)
    if as_json:
        render.echo_json({"model": f"{name}@{version}", "files": [str(path) for path in written]})
    else:
        for path in written:
            click.echo(str(path))


if __name__ == "__main__":
    main()
