"""Redis Sentinel: the store's client that follows the current primary, and the checks that make a
wrong set-up a clear error at start.

broker_url `sentinel://[[user]:password@]host:port;sentinel://host:port;.../db` lists the sentinels
(kombu's form, which Celery's broker takes as it is); the password in the URL is the primary's,
sentinel_password the sentinels' own; sentinel_master names the primary they monitor. redis-py's
Sentinel(...).master_for(name) asks the sentinels where the primary is and asks again after a
connection fails or a demoted primary answers READONLY (its connection raises ConnectionError
then), so the store's usual retries on ConnectionError carry it across a failover."""
from __future__ import annotations

import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

SENTINEL_PORT = 26379
TIMEOUT_S = 5.0
FOLLOW_INTERVAL_S = 1.0   # how often a client asks the sentinels where the primary is


@dataclass(frozen=True)
class SentinelURL:
    hosts: tuple[tuple[str, int], ...]
    username: str | None
    password: str | None
    db: int


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith("sentinel://")


def parse_sentinel_url(url: str) -> SentinelURL:
    """The sentinels' addresses, the primary's credentials (the first URL that has some) and the
    database (the last path given)."""
    hosts, username, password, db = [], None, None, 0
    for part in url.split(";"):
        parsed = urlsplit(part.strip())
        hosts.append((parsed.hostname or "127.0.0.1", parsed.port or SENTINEL_PORT))
        if password is None and parsed.password is not None:
            username = unquote(parsed.username) if parsed.username else None
            password = unquote(parsed.password)
        path = parsed.path.strip("/")
        if path:
            db = int(path)
    return SentinelURL(tuple(hosts), username, password, db)


def sentinel_client(url: str, master: str, sentinel_password: str | None, **options: Any) -> tuple[redis.Redis, Sentinel]:
    """A client of the primary `master` (following it across failovers), and the Sentinel it asks.
    `options`: more keyword arguments for the connections (ssl_* for TLS), to the sentinels too."""
    parsed = parse_sentinel_url(url)
    sentinel_kwargs = {"socket_connect_timeout": TIMEOUT_S, "socket_timeout": TIMEOUT_S, **options}
    if sentinel_password:
        sentinel_kwargs["password"] = sentinel_password
    sentinel = Sentinel(list(parsed.hosts), sentinel_kwargs=sentinel_kwargs, socket_connect_timeout=TIMEOUT_S,
                        **options)
    client = sentinel.master_for(master, redis_class=redis.Redis, username=parsed.username, password=parsed.password,
                                 db=parsed.db, socket_connect_timeout=TIMEOUT_S, health_check_interval=30)
    return client, sentinel


_followed: dict[tuple[int, int], threading.Thread] = {}   # (pid, id(pool)) -> its follower
_lock = threading.Lock()


def follow_primary(client: redis.Redis) -> None:
    """Ask the sentinels every FOLLOW_INTERVAL_S where the primary is, from a daemon thread of this
    process: when it moved, the client's idle connections are dropped, so that its next command
    goes to the new primary. (A connection to a demoted primary fails a write with READONLY, which
    redis-py turns into a reconnect, but it would go on answering reads from a replica that may
    be behind.) Once per client and process: a forked worker starts its own."""
    pool = client.connection_pool
    key = (os.getpid(), id(pool))
    with _lock:
        if key in _followed:
            return
        reference = weakref.ref(pool)

        def follow() -> None:
            while True:
                time.sleep(FOLLOW_INTERVAL_S)
                followed = reference()
                if followed is None:
                    return
                try:
                    followed.get_master_address()
                except redis.exceptions.RedisError:
                    pass   # no sentinel answers now: the commands' own errors and retries say so
                del followed

        thread = threading.Thread(target=follow, name="lstmq-sentinel-follower", daemon=True)
        _followed[key] = thread
        thread.start()


def check_sentinels(sentinel: Sentinel, master: str, where: str) -> tuple[str, int] | None:
    """The primary's address as the sentinels know it, or None when they know it but it cannot be
    told now. Raises SentinelProblem when no sentinel answers, or none monitors `master`."""
    answers, failures, monitored = 0, [], set()
    for client in sentinel.sentinels:
        try:
            masters = client.sentinel_masters()
        except redis.exceptions.AuthenticationError as error:
            raise SentinelProblem(f"the Redis Sentinel at {_address(client)} refused the credentials ({error}): "
                                  f"set sentinel_password (LSTMQ_SENTINEL_PASSWORD) to the sentinels' requirepass",
                                  "credentials") from None
        except redis.exceptions.RedisError as error:
            failures.append(f"{_address(client)}: {error}")
            continue
        answers += 1
        monitored.update(masters)
        if master in masters:
            info = masters[master]
            return info.get("ip"), int(info.get("port", 0))
    if not answers:
        raise SentinelProblem(f"no Redis Sentinel answers at {where} ({'; '.join(failures)})", "no-sentinel")
    known = ", ".join(sorted(monitored)) or "none"
    raise SentinelProblem(f"the Redis Sentinels at {where} monitor no primary named {master!r} (they monitor: "
                          f"{known}); set sentinel_master (LSTMQ_SENTINEL_MASTER)", "no-master")


def master_address(sentinel: Sentinel, master: str) -> tuple[str, int] | None:
    """Where the sentinels say the primary is now (None when none says)."""
    try:
        return sentinel.discover_master(master)
    except redis.exceptions.RedisError:
        return None


class SentinelProblem(Exception):
    """The sentinels cannot lead to the primary: `reason` is "no-sentinel", "no-master" or
    "credentials"."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _address(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host')}:{kwargs.get('port')}"
