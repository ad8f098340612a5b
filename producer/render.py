"""What the CLI shows: JSON, tables and progress bars. No Redis, no click: plain text to streams."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

from lstmq.shared.store import JobKind, JobRecord, JobStatus
from lstmq.shared.store.clock import iso_utc

SHOWN_FAILURES = 10


def dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False)


def echo_json(data: Any, stream: TextIO | None = None) -> None:
    print(dumps(data), file=stream or sys.stdout, flush=True)


def note(message: str) -> None:
    """A line for the person at the terminal (stderr), without breaking a progress bar."""
    tqdm.write(message, file=sys.stderr)


def number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# -- jobs -----------------------------------------------------------------------------------------
def progress_text(record: JobRecord) -> str:
    progress = record.progress()
    if record.kind is JobKind.TRAIN:
        text = f"epoch {record.epoch}/{progress.total or '?'}"
        if record.val_perplexity is not None:
            text += f", val ppl {record.val_perplexity:.2f}"
        return text
    return f"{progress.done:,.0f}/{progress.total if progress.total is not None else '?'} lines, " \
           f"{record.prompts_done} prompts, {record.words_done} words"


def pace_text(record: JobRecord, stalled: int = 0) -> str:
    """Words/s since the job started, the ETA while it runs, failed and stalled chunks."""
    parts = []
    if record.kind is JobKind.GENERATE and record.started is not None:
        end = record.finished if record.finished is not None else time.time()
        elapsed = max(end - record.started, 1e-9)
        parts.append(f"{record.words_done / elapsed:,.0f} words/s")
        progress = record.progress()
        if not record.status.finished and progress.total and progress.done:
            parts.append(f"ETA {duration((progress.total - progress.done) * elapsed / progress.done)}")
    if record.chunks_failed:
        parts.append(f"{record.chunks_failed} failed")
    if stalled:
        parts.append(f"{stalled} stalled")
    return ", ".join(parts)


def job_table(records: list[JobRecord], stalled: dict[str, int] | None = None, now: float | None = None) -> str:
    """One line per job: age, progress, words/s, ETA, failed chunks and stalled ones (lapsed
    leases), and why a failed job failed."""
    now = time.time() if now is None else now
    lines = [f"{'JOB':<17}{'KIND':<9}{'STATUS':<10}{'AGE':>7}  {'MODEL':<22}{'PROGRESS':<40}{'PACE':<28}REASON"]
    for record in records:
        reason = (record.error or "") if record.status is JobStatus.FAILED else ""
        lines.append(f"{record.id:<17}{record.kind.value:<9}{record.status.value:<10}{age(now - record.created):>7}  "
                     f"{record.model or record.model_name or '':<22}{progress_text(record):<40}"
                     f"{pace_text(record, (stalled or {}).get(record.id, 0)):<28}{shorten(reason, 60)}".rstrip())
    return "\n".join(lines)


def age(seconds: float) -> str:
    """12s, 5m, 3h, 2d: how long ago, in the largest whole unit."""
    seconds = max(int(seconds), 0)
    for size, unit in ((86_400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 1] + "…"


def describe_report(data: dict[str, Any]) -> str:
    """A seed report (SeedReport.to_json or JobRecord.seed_report) in a sentence."""
    top = ", ".join(f"{word} ({count})" for word, count in data["top_unknown_words"][:5])
    return (f"{data['lines_valid']} valid line(s), {data['lines_invalid']} invalid; {data['prompts_with_unknown_words']} "
            f"prompt(s) with unknown words ({data['unknown_word_rate']:.1%} of prompt words{': ' + top if top else ''}); "
            f"{data['words_to_generate']:,} words to generate" + ("" if data.get("complete", True) else " (so far)"))


def job_details(record: JobRecord, history: list[dict[str, Any]], failed_chunks: dict[int, str] | None = None,
                leases: dict[str, float] | None = None, attempts: dict[str, dict[str, Any]] | None = None,
                seed_report: dict[str, Any] | None = None, now: float | None = None) -> str:
    """`lstmq status JOB` for people: what the job is, where it stands, how fast, what failed
    and why, what was retried; `--json` has every field."""
    now = time.time() if now is None else now
    lines: list[str] = []

    def row(label: str, value: Any) -> None:
        lines.append(f"{label:>12}: {value}")

    created = iso_utc(record.created)
    row("job", f"{record.id} ({record.kind.value})")
    row("status", record.status.value + (f": {record.error}" if record.error else ""))
    if record.kind is JobKind.TRAIN:
        row("model", f"{record.model or '-'} (training {record.model_name}"
                     f"{', corpus ' + record.corpus_file if record.corpus_file else ''}"
                     f"{', promote ' + record.promote if record.promote else ''})")
    else:
        row("model", record.model or "-")
        if record.seeds_file:
            row("seeds", f"{record.seeds_file} ({record.seed_format or 'txt'}, {record.lines:,} lines in "
                         f"{record.chunks or record.chunks_sent} chunks{'' if record.submitted else ', still submitting'})")
    row("progress", progress_text(record))
    pace = pace_text(record)
    if pace:
        row("pace", pace)
    row("created", f"{created} ({age(now - record.created)} ago)")
    if record.started is not None:
        row("started", iso_utc(record.started))
    if record.finished is not None:
        row("finished", f"{iso_utc(record.finished)} (took {duration(record.finished - record.created)})")
    if record.kind is JobKind.TRAIN and record.promotion:
        row("promotion", ("promoted: " if record.promoted else "not promoted: ") + record.promotion)
    if seed_report is not None:
        row("seed lines", describe_report(seed_report))
    if leases:
        running = ", ".join(f"{member} ({deadline - now:+.0f}s)" for member, deadline in sorted(leases.items())[:10])
        row("running", f"{running}  (lease time left)")
    attempts = attempts or {}
    for chunk, reason in sorted((failed_chunks or {}).items())[:SHOWN_FAILURES]:
        tried = attempts.get(str(chunk), {}).get("attempts")
        row(f"chunk {chunk}", f"failed: {reason}" + (f" [{tried} attempts]" if tried else ""))
    if failed_chunks and len(failed_chunks) > SHOWN_FAILURES:
        lines.append(f"{'':>12}  ... and {len(failed_chunks) - SHOWN_FAILURES} more failed chunks")
    lost = {member: entry for member, entry in attempts.items()
            if entry["lost"] and (not member.isdigit() or int(member) not in (failed_chunks or {}))}
    for member, entry in sorted(lost.items())[:SHOWN_FAILURES]:
        what = "training" if member == "train" else f"chunk {member}"
        row("retried", f"{what}: {entry['attempts']} attempts, {entry['lost']} lost (last: {entry['last_end']})")
    for entry in history:
        perplexity = f", val ppl {entry['val_perplexity']:.2f}" if "val_perplexity" in entry else ""
        row(f"epoch {entry['epoch']}", f"loss {entry['loss']:.4f}{perplexity} ({entry['seconds']:.1f}s)")
    if history and history[-1].get("samples"):   # what the latest epoch writes, beside its loss
        for sample in history[-1]["samples"]:
            row(f"t={sample['temperature']}", f"{sample['prompt']} -> {sample['text']}")
    return "\n".join(lines)


def logprob_text(stats: dict[str, float]) -> str:
    return (f"logprob per word over {stats['lines']} lines: mean {stats['mean']:.3f}, min {stats['min']:.3f}, "
            f"p10 {stats['p10']:.3f}, median {stats['median']:.3f}, p90 {stats['p90']:.3f}, max {stats['max']:.3f}")


def failure_summary(record: JobRecord, failed_chunks: dict[int, str]) -> str:
    """Why a job failed, in a line: its own error, else its chunks' distinct reasons."""
    if record.error:
        return record.error
    reasons = sorted(set(failed_chunks.values()))
    if not reasons:
        return "unknown error"
    text = "; ".join(reasons[:3]) + (f"; and {len(reasons) - 3} other reasons" if len(reasons) > 3 else "")
    return f"{len(failed_chunks)} chunk(s) failed: {text}"


# -- workers --------------------------------------------------------------------------------------
def worker_json(worker: dict[str, Any]) -> dict[str, Any]:
    return {**worker, "last_heartbeat": iso_utc(worker.get("last_heartbeat")), "started": iso_utc(worker.get("started")),
            "watchdog_last_pass": iso_utc(worker.get("watchdog_last_pass")), "watchdog_stale": watchdog_stale(worker)}


def watchdog_stale(worker: dict[str, Any], now: float | None = None) -> bool:
    """Whether the worker's watchdog has had no good pass for over two of its intervals (its
    recovery or heartbeat steps keep failing: its log says why)."""
    interval = worker.get("watchdog_interval")
    if not interval:
        return False   # a worker of an lstmq that did not report it
    now = time.time() if now is None else now
    since = worker.get("watchdog_last_pass") or worker.get("started") or now
    return now - since > 2 * interval + 1


def queues_line(queues: list[dict[str, Any]]) -> str:
    """queued messages: generate 3, train 0; dead-lettered: generate 1 (lstmq queues shows them)"""
    depths = ", ".join(f"{queue['queue']} {queue['messages']}" for queue in queues)
    line = f"queued messages: {depths}"
    dead = [f"{queue['queue']} {queue['dead_letters']}" for queue in queues if queue["dead_letters"]]
    if dead:
        line += f"; dead-lettered: {', '.join(dead)} (lstmq queues shows them)"
    return line


def device_text(worker: dict[str, Any]) -> str:
    """GPU 1 NVIDIA H100 80GB HBM3, or cpu; then how it decodes (native, tensorflow)."""
    if worker.get("gpu_index") is not None:
        text = f"GPU {worker['gpu_index']}" + (f" {worker['gpu_name']}" if worker.get("gpu_name") else "")
    else:
        text = worker.get("device", "?") + (f" {worker['gpu_name']}" if worker.get("gpu_name") else "")
    return text + (f", {worker['decoding']}" if worker.get("decoding") else "")


def workers_table(workers: list[dict[str, Any]], queues: list[dict[str, Any]]) -> str:
    now = time.time()
    width = max([len(device_text(worker)) + 2 for worker in workers] + [16])
    lines = [queues_line(queues),
             f"{'WORKER':<32}{'DEVICE':<{width}}{'QUEUES':<16}{'CHUNKS':>7}  {'BEAT':>6}  {'MODELS':<24}NOW"]
    for worker in workers:
        current = worker.get("current")
        doing = f"job {current['job']} {current['member']}" if current else "idle"
        lines.append(f"{worker['name']:<32}{device_text(worker):<{width}}{','.join(worker.get('queues', [])):<16}"
                     f"{worker.get('chunks_done', 0):>7}  {now - worker.get('last_heartbeat', now):>5.0f}s  "
                     f"{','.join(worker.get('models', [])) or '-':<24}{doing}")
    if not workers:
        lines.append("(no live worker: start one with lstmq-worker)")
    for worker in workers:
        if worker.get("decoding") not in (None, "native") and worker.get("device", "").startswith("cpu"):
            lines.append(f"{worker['name']}: decoding with {worker.get('decoding_detail', worker['decoding'])}")
        if watchdog_stale(worker, now):
            last = worker.get("watchdog_last_pass")
            since = f"its last good pass was {now - last:.0f}s ago" if last else "it has had no good pass yet"
            lines.append(f"{worker['name']}: watchdog stale: {since} (it runs every {worker['watchdog_interval']:g}s); "
                         f"its heartbeat or recovery keeps failing: see that worker's log")
    return "\n".join(lines)


def queues_table(queues: list[dict[str, Any]]) -> str:
    lines = [f"{'QUEUE':<12}{'MESSAGES':>9}{'CONSUMERS':>10}{'DEAD-LETTERED':>15}"]
    for queue in queues:
        lines.append(f"{queue['queue']:<12}{queue['messages']:>9}{queue['consumers']:>10}{queue['dead_letters']:>15}")
    for queue in queues:
        if queue["dead_letters"]:
            lines.append(f"\nnewest dead-lettered entries of {queue['queue']} (Redis list {queue['dead_letter_key']}):")
            lines.extend(f"  {entry}" for entry in queue["newest_dead_letters"])
    return "\n".join(lines)


# -- models ---------------------------------------------------------------------------------------
def version_row(name: str, version: int, meta: dict[str, Any], aliases: dict[str, int]) -> dict[str, Any]:
    metrics = meta.get("metrics", {})
    registered = meta.get("registered")
    return {"model": f"{name}@{version}", "version": version, "created": utc_text(meta.get("created")),
            "registered": iso_utc(registered) if isinstance(registered, (int, float)) else registered,
            "epochs_run": metrics.get("epochs_run"), "val_perplexity": metrics.get("val_perplexity"),
            "loss": metrics.get("loss"), "vocab_size": meta.get("network", {}).get("vocab_size", 0),
            "corpus_sha256": meta.get("corpus_sha256", ""), "artifact_sha256": meta.get("artifact_sha256"),
            "job": meta.get("job"), "aliases": sorted(alias for alias, target in aliases.items() if target == version),
            "params": meta.get("training", {})}


def utc_text(value: Any) -> Any:
    """An ISO 8601 UTC time as every --json output writes it (a trailing Z, not +00:00)."""
    if isinstance(value, (int, float)):
        return iso_utc(value)
    if isinstance(value, str) and value.endswith("+00:00"):
        return value[:-len("+00:00")] + "Z"
    return value


def load_failure_json(failure: dict[str, Any]) -> dict[str, Any]:
    return {**failure, "at": iso_utc(failure["at"])}


def params_text(params: dict[str, Any]) -> str:
    """The parameters that tell versions apart, in a few characters."""
    short = {"embedding_dim": "emb", "lstm_units": "lstm", "batch_size": "bs", "learning_rate": "lr", "epochs": "ep"}
    return " ".join(f"{label}{params[key]:g}" if isinstance(params.get(key), float) else f"{label}{params.get(key)}"
                    for key, label in short.items() if key in params)


def versions_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'MODEL':<24}{'EPOCHS':>7}{'VAL PPL':>10}{'VOCAB':>8}  {'CORPUS':<14}{'CREATED':<27}"
             f"{'PARAMS':<34}ALIASES"]
    for row in rows:
        lines.append(f"{row['model']:<24}{row['epochs_run'] or 0:>7}{number(row['val_perplexity']):>10}"
                     f"{row['vocab_size']:>8}  {row['corpus_sha256'][:12]:<14}{row['created'] or '':<27}"
                     f"{params_text(row.get('params', {})):<34}{','.join(row['aliases'])}")
        for failure in row.get("load_errors", []):
            lines.append(f"{'':<24}  could not load on {failure['worker']}: {failure['reason']}")
    return "\n".join(lines)


def models_table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'NAME':<24}{'VERSIONS':>9}{'CURRENT':>9}"]
    for row in rows:
        lines.append(f"{row['name']:<24}{len(row['versions']):>9}{row['current'] or '-':>9}")
    return "\n".join(lines)


# -- progress while waiting -------------------------------------------------------------------------
def _bar_options(show: bool) -> dict[str, Any]:
    """tqdm options: follow the terminal's width, or 100 columns where it reports none (a pty)."""
    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        columns = 0
    return {"disable": not show, "file": sys.stderr, "dynamic_ncols": columns > 0, "ncols": None if columns else 100}


def duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def seed_text(record: JobRecord) -> str:
    """What the workers found in the seed lines so far, for a progress line ("" when nothing)."""
    parts = []
    if record.input_errors:
        parts.append(f"{record.input_errors:,} bad line(s)")
    if record.unknown_words and record.prompt_words:
        parts.append(f"{record.unknown_words / record.prompt_words:.1%} unknown words")
    return "".join(f", {part}" for part in parts)


class GenerateProgress:
    """Seed lines done (or failed) of the job's lines, words/s and ETA since waiting began, and
    what the workers found in the lines so far (bad lines, unknown words): a bar on a terminal;
    otherwise a plain line every `interval` seconds (a log file reads it)."""

    def __init__(self, record: JobRecord, show: bool, clock, log: TextIO = sys.stderr, interval: float = 10.0):
        self.clock, self.show, self.log, self.interval = clock, show, log, interval
        self.first_words, self.first_time = record.words_done, clock()
        self.first_done = record.progress().done
        self.last_line = clock()
        self.bar = tqdm(total=record.lines if record.submitted else None, unit="line", desc=f"job {record.id}",
                        smoothing=0.1,
                        **_bar_options(show))

    def update(self, record: JobRecord) -> None:
        progress = record.progress()
        if progress.total is not None:
            self.bar.total = progress.total
        self.bar.update(progress.done - self.bar.n)
        now = self.clock()
        elapsed = now - self.first_time
        rate = (record.words_done - self.first_words) / elapsed if elapsed > 0 else 0.0
        if elapsed > 0:
            self.bar.set_postfix_str(f"{rate:,.0f} words/s{seed_text(record)}", refresh=False)
        if not self.show and (now - self.last_line >= self.interval or record.status.finished):
            self.last_line = now
            print(self.line(record, rate, elapsed), file=self.log, flush=True)

    def line(self, record: JobRecord, rate: float, elapsed: float) -> str:
        progress = record.progress()
        done = f"{progress.done:,.0f}/{progress.total:,} lines ({progress.fraction:.0%})" if progress.total else \
            f"{progress.done:,.0f} lines (submission still open)"
        lines_per_second = (progress.done - self.first_done) / elapsed if elapsed > 0 else 0.0
        eta = ""
        if progress.total and lines_per_second > 0 and not record.status.finished:
            eta = f", ETA {duration((progress.total - progress.done) / lines_per_second)}"
        failed = f", {record.chunks_failed} chunk(s) failed" if record.chunks_failed else ""
        return f"job {record.id}: {record.status.value}, {done}, {rate:,.0f} words/s{eta}{failed}{seed_text(record)}"

    def close(self) -> None:
        self.bar.refresh()
        self.bar.close()


class TrainProgress:
    """Epochs (fractional while one runs) with loss and validation perplexity: on a terminal, a
    bar, and each finished epoch keeps its own line above it (as Keras prints); otherwise one line
    per epoch and a plain line every `interval` seconds within an epoch."""

    def __init__(self, record: JobRecord, show: bool, log: TextIO, interval: float = 10.0, clock=time.monotonic):
        self.show, self.log, self.reported, self.interval, self.clock = show, log, record.epoch, interval, clock
        self.last_line = clock()
        self.last_ppl = ""   # the last finished epoch's validation perplexity, shown beside the running loss
        self.bar = tqdm(total=record.progress().total, unit="epoch", desc=f"train {record.model_name}",
                        bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} epochs [{elapsed}<{remaining}{postfix}]",
                        **_bar_options(show))

    def update(self, record: JobRecord) -> None:
        progress = record.progress()
        self.bar.update(progress.done - self.bar.n)
        running = record.step and record.steps and record.epoch_running == record.epoch + 1
        if record.epoch > self.reported and record.loss is not None:
            self.reported = record.epoch
            line = f"epoch {record.epoch}/{progress.total}: loss {record.loss:.4f}"
            if record.val_perplexity is not None:
                line += f", val ppl {record.val_perplexity:.2f}"
                self.last_ppl = f", val ppl {record.val_perplexity:.2f}"
            if not running:   # between epochs, and at the end: the finished epoch's figures
                self.bar.set_postfix_str(line.split(": ", 1)[1], refresh=False)
            if self.show:
                self.bar.write(line, file=sys.stderr)   # stays on screen; the bar goes on below it
            else:
                print(line, file=self.log, flush=True)
                self.last_line = self.clock()
        elif not self.show and self.clock() - self.last_line >= self.interval and not record.status.finished:
            self.last_line = self.clock()
            loss = f", loss {record.batch_loss:.4f}" if running and record.batch_loss is not None else ""
            batch = f", batch {record.step}/{record.steps}" if record.step and record.steps else ""
            print(f"train {record.model_name}: {record.status.value}, epoch {record.epoch + 1}/{progress.total}{batch}{loss}",
                  file=self.log, flush=True)
        if running:
            loss = f", loss {record.batch_loss:.4f}" if record.batch_loss is not None else ""
            self.bar.set_postfix_str(f"batch {record.step}/{record.steps}{loss}{self.last_ppl}", refresh=False)

    def close(self) -> None:
        self.bar.close()
