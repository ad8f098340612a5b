"""The workers' Redis transport: kombu's, except that an undecodable queue entry never takes the
worker down.

kombu's Redis transport pops a queue entry with BRPOP and decodes it in Channel._brpop_read
(`loads(bytes_to_str(item))`, then kombu's Message); an entry that is not UTF-8, not JSON or not
a kombu message raises there, out of the Celery event loop, and the Celery worker stops with
"Unrecoverable error". Here the channel's Redis client checks every BRPOP reply as it is read,
before kombu decodes it: an entry that kombu could not turn into a message is pushed as it was
(raw bytes) onto the dead-letter list `lstmq:dead-letter:<queue>`, logged at ERROR with the queue
and its first bytes, and the reply is handed on as "nothing popped", so the worker goes on
consuming. Entries that decode are passed on untouched; everything else is kombu's own code.

Only the workers use this (worker_config sets Celery's broker_transport to broker_transport(url));
the producer's Dispatcher keeps the stock transport. If kombu's internals are not what this hooks
into, the stock behaviour is kept and a warning is logged once."""
from __future__ import annotations

import functools
import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from lstmq.shared.store import keys

log = logging.getLogger("lstmq.worker.transport")

EXCERPT_BYTES = 200   # how much of a dead-lettered entry the log shows


def dead_letter_key(queue: str) -> str:
    """The dead-letter list of one queue (newest first, raw entries)."""
    return keys.dead_letter(queue)


def broker_transport(broker_url: str) -> str | None:
    """Celery's broker_transport for a worker: this module's transport for redis:// and rediss://
    URLs; None (the transport the URL's scheme names) for anything else."""
    scheme = broker_url.partition("://")[0].lower()
    return {"redis": f"{__name__}:Transport", "rediss": f"{__name__}:SecureTransport",
            "sentinel": f"{__name__}:SentinelTransport"}.get(scheme)


def _hookable() -> str | None:
    """Why kombu's Redis channel cannot be hooked (None: it can). What this module relies on:
    Channel._get_client (the Redis client class or a partial of it), Channel._brpop_read reading
    its reply with client.parse_response(connection, 'BRPOP') and treating an empty reply as
    "nothing popped", Channel.sep (the priority suffix separator), Channel.Message and
    Channel.conn_or_acquire."""
    channel = getattr(kombu_redis, "Channel", None)
    if channel is None:
        return "kombu.transport.redis has no Channel"
    for name in ("_get_client", "_brpop_read", "conn_or_acquire", "Message"):
        if not callable(getattr(channel, name, None)):
            return f"kombu's Redis Channel has no {name}"
    if not isinstance(getattr(channel, "sep", None), str):
        return "kombu's Redis Channel has no queue separator (sep)"
    code = getattr(channel._brpop_read, "__code__", None)
    if code is None or "parse_response" not in code.co_names:
        return "kombu's Channel._brpop_read no longer reads BRPOP replies with client.parse_response"
    return None


UNHOOKABLE = _hookable()
_warned = False


def _warn_once(reason: str) -> None:
    global _warned
    if not _warned:
        _warned = True
        log.warning("undecodable queue entries are NOT dead-lettered (%s, kombu %s): one can take this worker "
                    "down; the stock Redis transport is used", reason, _kombu_version())


def _kombu_version() -> str:
    import kombu

    return getattr(kombu, "__version__", "?")


def decode_problem(channel: Any, item: Any) -> str | None:
    """What kombu would fail on when it turns this popped entry into a message (None: nothing).
    The same steps as kombu's _brpop_read and virtual Channel.basic_consume, plus what the Redis
    QoS needs to track the message (a plain delivery tag, a delivery_info with exchange and
    routing key)."""
    try:
        payload = loads(bytes_to_str(item))   # kombu's own steps (bytes_to_str replaces bytes that are not UTF-8)
    except Exception as error:   # JSONDecodeError, or whatever kombu's JSON object hook raises
        return f"not JSON ({type(error).__name__}: {error})"
    if not isinstance(payload, dict):
        return f"not a kombu message (JSON {type(payload).__name__}, not an object)"
    properties = payload.get("properties")
    if not isinstance(properties, dict):
        return "not a kombu message (no 'properties' object)"
    tag = properties.get("delivery_tag")
    if isinstance(tag, bool) or not isinstance(tag, (str, int, float)):
        return "not a kombu message (no delivery_tag)"
    info = properties.get("delivery_info")
    if not isinstance(info, dict) or not all(isinstance(info.get(key), str) for key in ("exchange", "routing_key")):
        return "not a kombu message (no delivery_info with exchange and routing_key)"
    try:
        channel.Message(payload, channel=channel)
    except Exception as error:   # whatever kombu's Message raises on this payload (bad body encoding, ...)
        return f"not a kombu message ({type(error).__name__}: {error})"
    return None


def _screening_client(factory: Any, screen: Any) -> Any:
    """A client class (or partial, like kombu's) whose BRPOP replies pass through screen(reply)
    first; None when `factory` is not something this knows how to extend."""
    if isinstance(factory, functools.partial):
        inner = _screening_client(factory.func, screen)
        return None if inner is None else functools.partial(inner, *factory.args, **factory.keywords)
    if not isinstance(factory, type) or not callable(getattr(factory, "parse_response", None)):
        return None

    class ScreeningClient(factory):
        def parse_response(self, connection, command_name, *args, **options):
            reply = super().parse_response(connection, command_name, *args, **options)
            if reply and isinstance(command_name, (str, bytes)) and bytes_to_str(command_name).upper() == "BRPOP":
                return screen(reply)
            return reply

    ScreeningClient.__name__ = ScreeningClient.__qualname__ = f"Screening{factory.__name__}"
    return ScreeningClient


class Screening:
    """What the channels below add to kombu's: a client that sets undecodable BRPOP entries aside."""

    def _get_client(self):
        factory = super()._get_client()
        if UNHOOKABLE is not None:
            _warn_once(UNHOOKABLE)
            return factory
        screening = _screening_client(factory, self._screen_brpop_reply)
        if screening is None:
            _warn_once(f"kombu's Redis client is {factory!r}, not a redis-py client class")
            return factory
        return screening

    def _screen_brpop_reply(self, reply: Any) -> Any:
        """The reply itself when its entry decodes; None ("nothing popped") when the entry was set
        aside. Never raises for the entry's sake."""
        try:
            dest, item = reply
            queue = bytes_to_str(dest).rsplit(self.sep, 1)[0]
        except (TypeError, ValueError, UnicodeDecodeError):
            return reply   # not the (queue, entry) pair this knows: kombu's business
        problem = decode_problem(self, item)
        if problem is None:
            return reply
        self._dead_letter(queue, item, problem)
        return None

    def _dead_letter(self, queue: str, item: Any, problem: str) -> None:
        raw = item if isinstance(item, bytes) else str(item).encode("utf-8", "surrogateescape")
        excerpt = repr(raw[:EXCERPT_BYTES]) + ("..." if len(raw) > EXCERPT_BYTES else "")
        key = dead_letter_key(queue)
        try:
            with self.conn_or_acquire() as client:
                client.lpush(key, raw)
        except Exception as error:   # Redis unreachable, out of memory...: still never take the worker down
            log.error("undecodable entry on queue %r (%s, %d bytes) could NOT be moved to the dead-letter list %s "
                      "(%s: %s) and is dropped: %s", queue, problem, len(raw), key, type(error).__name__, error,
                      excerpt)
            return
        log.error("undecodable entry on queue %r (%s, %d bytes) moved to the dead-letter list %s: %s",
                  queue, problem, len(raw), key, excerpt)


class Channel(Screening, kombu_redis.Channel):
    """kombu's Redis channel whose client sets undecodable BRPOP entries aside."""


class SentinelChannel(Screening, kombu_redis.SentinelChannel):
    """kombu's Redis Sentinel channel (the client follows the primary) that does the same."""


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the screening Channel (for redis:// URLs)."""

    Channel = Channel

    def __init__(self, *args: Any, **kwargs: Any):
        if UNHOOKABLE is not None:
            _warn_once(UNHOOKABLE)
        super().__init__(*args, **kwargs)


class SecureTransport(Transport):
    """The same for rediss:// URLs. kombu turns TLS on for a URL whose scheme names the transport
    ('rediss'), even without ssl options; a transport named by its class does not see the scheme,
    so this does what kombu.Connection does for 'rediss' (options given, e.g. Celery's
    broker_use_ssl, are kept as they are)."""

    def __init__(self, client: Any, *args: Any, **kwargs: Any):
        if not client.ssl:
            import ssl

            log.warning("Secure redis scheme specified (rediss) with no ssl options, defaulting to insecure "
                        "SSL behaviour.")
            client.ssl = {"ssl_cert_reqs": ssl.CERT_NONE}
        super().__init__(client, *args, **kwargs)


class SentinelTransport(kombu_redis.SentinelTransport):
    """kombu's Redis Sentinel transport with the screening channel (for sentinel:// URLs)."""

    Channel = SentinelChannel

    def __init__(self, *args: Any, **kwargs: Any):
        if UNHOOKABLE is not None:
            _warn_once(UNHOOKABLE)
        super().__init__(*args, **kwargs)


def _show_as_redis_urls() -> None:
    """Connection.as_uri() writes the transport's name as the URL scheme; kombu maps alternative
    transports to their canonical scheme with Connection.resolve_aliases (librabbitmq -> amqp).
    Map these transports to redis/rediss the same way, so that Celery's banner and log and the
    tools that parse the URL (Flower's broker view) see the usual redis:// URL."""
    from kombu import Connection

    aliases = getattr(Connection, "resolve_aliases", None)
    if isinstance(aliases, dict):
        aliases.setdefault(f"{__name__}:Transport", "redis")
        aliases.setdefault(f"{__name__}:SecureTransport", "rediss")
        aliases.setdefault(f"{__name__}:SentinelTransport", "sentinel")


_show_as_redis_urls()
