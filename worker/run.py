"""One Celery worker (python -m lstmq.worker.run): started by lstmq-worker, once per device, with
CUDA_VISIBLE_DEVICES already set. This process is the prefork parent and never imports
TensorFlow; its single pool process does (lstmq.worker.tasks -> runtime.init_process).

Before Celery starts, the worker pings its broker with the store (Celery's own start-up would
retry a broker that refuses it for a long time, with no clear cause):

- Redis refuses the credentials (wrong password, none given where one is required: WRONGPASS,
  NOAUTH; an ACL user without the right to PING) or the server's TLS certificate fails the check:
  a message on stderr and exit status 3 at once; restarting cannot help.
- Redis' maxmemory-policy is not noeviction (and the allow_eviction setting does not accept it):
  a message naming the policy, and exit status 3.
- Redis cannot be reached (connection refused or reset, time-out, still loading its data): each
  attempt is logged and retried after 1, 2, 4, ... seconds, at most 30, for as long as it takes
  (a worker waits for its broker); Celery starts once Redis answers.

No message or log line of this module holds the broker's password (shared.redact).

Exit status: 0 stopped; 2 bad settings (or a TLS file that cannot be read); 3 the broker refused
the credentials, its TLS certificate failed the check, or it may evict keys (EXIT_BROKER_REFUSED); 130 interrupted
while waiting for the broker; anything else comes from Celery."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable

from lstmq.shared.config import Settings, load_settings
from lstmq.shared.errors import BrokerUnavailable, ConfigError
from lstmq.shared.messages import QUEUES
from lstmq.shared.redact import redact, redact_url
from lstmq.worker import runtime
from lstmq.worker.lifetime import die_with_launcher

EXIT_SETTINGS, EXIT_BROKER_REFUSED, EXIT_INTERRUPTED = 2, 3, 130
FIRST_DELAY_S, MAX_DELAY_S = 1.0, 30.0

log = logging.getLogger("lstmq.worker.startup")


def startup_logger(label: str) -> logging.Logger:
    """A logger for the start-up check, in Celery's log format, that Celery's own logging set-up
    (which comes later) leaves alone."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"[%(asctime)s: %(levelname)s/%(processName)s] {label}%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


def backoff_delays(first: float = FIRST_DELAY_S, cap: float = MAX_DELAY_S):
    """1, 2, 4, ... seconds, then `cap` for ever."""
    delay = first
    while True:
        yield min(delay, cap)
        delay = min(delay * 2, cap)


def wait_for_broker(settings: Settings, logger: logging.Logger,
                    sleep: Callable[[float], None] = time.sleep) -> int:
    """Return once Redis at settings.broker_url answers a PING (the number of attempts it took),
    retrying an unreachable Redis with backoff without end. BrokerUnavailable (its `reason`
    "credentials" or "certificate") when Redis refuses the credentials or the TLS certificate fails
    the check; ConfigError when a TLS file cannot be read."""
    from lstmq.shared.store import Store

    url = settings.broker_url
    store = Store.from_settings(settings)
    try:
        delays = backoff_delays()
        attempt = 0
        while True:
            attempt += 1
            try:
                store.ping(url)
            except BrokerUnavailable as error:
                if getattr(error, "reason", "unreachable") != "unreachable":
                    raise
                delay = next(delays)
                cause = getattr(error, "cause", None) or error
                logger.warning("Redis at %s is unreachable (attempt %d): %s; retrying in %g s",
                               redact_url(url), attempt, redact(cause, url).rstrip("."), delay)
                sleep(delay)
                continue
            if attempt > 1:
                logger.info("Redis at %s answers after %d attempts; starting", redact_url(url), attempt)
            return attempt
    finally:
        store.redis.close()


def check_redis_policy(settings: Settings) -> None:
    """Refuse a Redis whose maxmemory-policy may evict lstmq's keys (unless allow_eviction)."""
    from lstmq.shared.store import Store
    from lstmq.shared.store.health import check_eviction_policy

    store = Store.from_settings(settings)
    try:
        check_eviction_policy(store.redis, settings.allow_eviction)
    finally:
        store.redis.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lstmq.worker.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="lstmq-cpu@%h", help="Celery node name")
    parser.add_argument("--device", default=os.environ.get("LSTMQ_DEVICE", "cpu"), help="device label for logs")
    parser.add_argument("--queues", default=",".join(QUEUES))
    parser.add_argument("--broker")
    parser.add_argument("--config")
    parser.add_argument("--loglevel", default="INFO")
    args = parser.parse_args(argv)
    die_with_launcher()   # never outlive lstmq-worker (worker.lifetime)
    try:
        settings = load_settings(args.config, {"broker_url": args.broker})
    except ConfigError as error:
        print(f"lstmq-worker: {redact(error, args.broker)}", file=sys.stderr)
        return EXIT_SETTINGS
    cores = os.environ.get("LSTMQ_CPUS", "")
    if cores:   # lstmq-worker --workers N: this worker's share of the cores (its pool inherits it)
        try:
            os.sched_setaffinity(0, {int(core) for core in cores.split(",")})
        except (ValueError, OSError) as error:
            print(f"lstmq-worker: could not keep to cores {cores}: {error}", file=sys.stderr)
    name = args.name.replace("%h", os.uname().nodename)
    runtime.configure(settings, name, args.device)   # before anything reads the app's settings
    logger = startup_logger(runtime.describe())
    try:
        wait_for_broker(settings, logger)
    except ConfigError as error:
        print(f"lstmq-worker: {redact(error, settings.broker_url)}", file=sys.stderr)
        return EXIT_SETTINGS
    except BrokerUnavailable as error:   # refused: the credentials or the certificate; or Sentinel set up wrong
        print(f"lstmq-worker: {redact(error, settings.broker_url, settings.sentinel_password)}", file=sys.stderr)
        return EXIT_BROKER_REFUSED
    except KeyboardInterrupt:
        print("lstmq-worker: interrupted while waiting for Redis", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        check_redis_policy(settings)
    except BrokerUnavailable as error:   # an evicting Redis would drop queued work without a word
        print(f"lstmq-worker: {redact(error, settings.broker_url)}", file=sys.stderr)
        return EXIT_BROKER_REFUSED
    from celery.signals import worker_init

    from lstmq.worker import tasks   # registers the tasks on the app
    started = []
    worker_init.connect(lambda sender, **_: started.append(sender), weak=False)
    tasks.app.worker_main(["worker", "--queues", args.queues, "--concurrency", "1", "--pool", "prefork",
                           "--hostname", args.name, "--loglevel", args.loglevel, "--without-mingle",
                           "--without-gossip"])
    # worker_main() drops the worker's exit status (1 after an "Unrecoverable error"): pass it on
    return (started[0].exitcode or 0) if started else 1


if __name__ == "__main__":
    sys.exit(main())
