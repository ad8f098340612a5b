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


CONFIG_HELP = ("Settings file (YAML); else $LSTMQ_CONFIG, else ~/.config/lstmq/config.yaml, else "
               "/etc/lstmq/config.yaml, the first that exists.")
BROKER_HELP = "Redis URL, e.g. redis://host:6379/0 (setting broker_url, LSTMQ_BROKER_URL)."


def common_options(command):
    """--config and -b/--broker, on the command (`lstmq status -b URL`) or before it
    (`lstmq -b URL status`, as celery takes them); the command's own win."""
    @click.option("--config", "config_file", type=click.Path(dir_okay=False), help=CONFIG_HELP)
    @click.option("-b", "--broker", help=BROKER_HELP)
    @functools.wraps(command)
    def wrapper(*args, config_file=None, broker=None, **kwargs):
        root = click.get_current_context().find_root().params
        config_file = config_file or root.get("config_file")
        broker = broker or root.get("broker")
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


def client_for(config_file, broker, **overrides):
    """The Python API's client (lstmq.Client) with the command's settings: commands are thin
    calls of it, and show what it returns."""
    from lstmq.producer.api import Client
    return Client(broker_url=broker, config=config_file, **overrides)


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


class LstmqGroup(click.Group):
    """Usage errors (an unknown option, a missing argument, conflicting flags) exit 2 as click's
    do; with --json anywhere on the command line they are a JSON object {"error", "exit_status"},
    as every other failure is."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        try:
            return super().main(args, prog_name or "lstmq", complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as stop:   # --help, --version
            sys.exit(stop.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(EXIT_FAILED)
        except click.ClickException as error:
            if "--json" in args:
                from lstmq.producer import render
                render.echo_json({"error": error.format_message(), "exit_status": error.exit_code})
            else:
                error.show()
            sys.exit(error.exit_code)


@click.group(cls=LstmqGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="lstmq")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help=CONFIG_HELP)
@click.option("-b", "--broker", help=BROKER_HELP)
def main(config_file, broker):
    """Batch word-level LSTM text generation on Celery workers.

    \b
      lstmq train corpus.txt --model sherlock
      lstmq generate seeds.txt --model sherlock -o out.jsonl
      lstmq status

    Settings come from the flags, LSTMQ_* variables, and a config file: --config, else
    $LSTMQ_CONFIG, else ~/.config/lstmq/config.yaml, else /etc/lstmq/config.yaml. -b/--broker
    and --config go before or after the command. Scripts: `from lstmq import Client`.
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
@click.option("--no-promote", is_flag=True, help="Register the new version without making it current.")
@click.option("--promote-if-better", is_flag=True,
              help="Make it current only if its validation perplexity beats the current version's on the same "
                   "held-out lines.")
@click.option("--detach", is_flag=True, help="Submit, print the job id and return (lstmq wait JOB later).")
@click.option("--wait", is_flag=True, hidden=True, help="Wait (the default; kept for scripts that say it).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: job, status, model.")
@timeout_option
@common_options
@lstmq_errors
def train(corpus, model_name, epochs, batch_size, learning_rate, layers, dropout, clipnorm, no_promote,
          promote_if_better, detach, wait, as_json, timeout, config_file, broker):
    """Upload CORPUS (UTF-8 text) and train a new version of a model on it (by default the
    new version becomes the model's current one). Waits, showing per-epoch loss and validation
    perplexity, unless --detach."""
    if no_promote and promote_if_better:
        raise click.UsageError("--no-promote and --promote-if-better exclude each other")
    if wait and detach:
        raise click.UsageError("--wait and --detach exclude each other")
    promote = "never" if no_promote else "if-better" if promote_if_better else "always"
    wait = not detach
    from lstmq.producer import render

    client = client_for(config_file, broker)
    job = client.train(corpus, model_name, epochs=epochs, promote=promote, batch_size=batch_size,
                       learning_rate=learning_rate, layers=layers, dropout=dropout, clipnorm=clipnorm)
    settings, store, job_id, submission = job.client.settings, client.store, job.id, job.submission
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
        record = wait_for_job(store, job_id, settings, show_progress() and not as_json, dispatcher_for(settings),
                              timeout)
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
    from lstmq.producer.submit import NoPrompts

    client = client_for(config_file, broker, words=words, temperature=temperature, top_k=top_k, top_p=top_p,
                        n=samples, seed=seed, chunk_size=chunk_size)
    settings = client.settings
    if output is None and not (detach or dry_run):
        raise click.UsageError("missing -o/--output OUT.jsonl (or use --detach and `lstmq collect` later)")
    if output == "-" and detach:
        raise click.UsageError("-o - writes the results as they are collected: it does not go with --detach")
    if detach and dry_run:
        raise click.UsageError("--dry-run sends nothing: it does not go with --detach")
    if stats and (detach or dry_run):
        raise click.UsageError("--stats summarizes the collected lines: it goes with waiting (not --detach or --dry-run)")
    check_path(seeds, fmt)
    store = client.store
    if dry_run:
        return preview(store, settings, seeds, model_spec, fmt, output, as_json)

    def created(job_id: str) -> None:   # before the first chunk goes out: the id is never lost
        click.echo(f"lstmq: job {job_id}: submitting {seeds} to {model_spec}", err=True)

    try:
        submission = client.generate(seeds, model_spec, format=fmt, on_created=created).submission
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
        from lstmq.producer.seeds import display_name
        why = (f"no usable line ({len(submission.bad_lines)} bad line(s))" if submission.bad_lines
               else "no prompt in the file (it is empty or holds only blank lines)")
        click.echo(f"lstmq: {display_name(seeds)}: {why}; a real run would fail the same way", err=True)
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
               if record.status is JobStatus.FAILED else
               "cancelled (lstmq cancel); what was done is in the output" if record.status is JobStatus.CANCELLED
               else None}
    if record.status is JobStatus.CANCELLED:
        exit_status = EXIT_CANCELLED
    elif record.status is JobStatus.FAILED:   # no usable line in the file: the input's fault, a usage error
        no_usable_line = record.submitted and record.chunks_done == record.chunks and not record.prompts
        exit_status = EXIT_USAGE if no_usable_line else EXIT_FAILED
    else:
        exit_status = EXIT_PARTIAL if errors else 0
    summary["exit_status"] = exit_status
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
    elif record.status is JobStatus.FAILED:
        click.echo(f"lstmq: job {job_id} failed: {summary['error']}", err=True)
    if exit_status:
        sys.exit(exit_status)


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
    collect_job(client_for(config_file, broker).store, settings, job, output, as_json, timeout)


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

    status = client_for(config_file, broker).job(job).cancel()
    if as_json:
        render.echo_json({"job": job, "status": status})
    else:
        click.echo(f"job {job}: {status}")


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

    client = client_for(config_file, broker)
    store = client.store
    if job:   # a read: a lapsed submission is failed by the workers' watchdogs (or a waiting CLI)
        status_object = client.job(job).status()
        if as_json:
            render.echo_json(status_object)
        else:
            record = store.jobs.get(job)
            report = status_object.get("check") if record.kind is JobKind.GENERATE else None
            click.echo(render.job_details(record, status_object.get("history", []), store.jobs.failed_chunks(job),
                                          store.jobs.leases(job), status_object["attempts"], report))
        return
    if as_json:
        render.echo_json(client.jobs(limit))
        return
    records = []
    for job_id in store.jobs.recent(limit):
        try:
            records.append(store.jobs.get(job_id))
        except JobNotFound:   # expired since the index said otherwise
            continue
    click.echo(f"{render.queues_line(client.queues())}; live workers: {len(store.workers.live())}")
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

    client = client_for(config_file, broker)
    if as_json:
        render.echo_json(client.workers())
    else:
        click.echo(render.workers_table(client.store.workers.live(), client.queues()))


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
    """Every model name, its number of versions and its current version (--json: every model as
    `models show` describes it)."""
    from lstmq.producer import render

    rows = client_for(config_file, broker).models()
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

    model = client_for(config_file, broker).model(name)
    if as_json:
        render.echo_json(model)
    else:
        click.echo(render.versions_table(model["versions"]))


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

    promoted = client_for(config_file, broker).promote(spec, alias)
    if as_json:
        render.echo_json(promoted)
    else:
        name, version = promoted["model"].split("@")
        before = promoted["previous"]
        was = f" (was {name}@{before})" if before and str(before) != version else ""
        click.echo(f"{name}@{alias} -> {promoted['model']}{was}")


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
