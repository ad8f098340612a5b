"""Redis' own state where it decides lstmq's fate: the eviction policy (lstmq's Redis must never
evict: queued work, results and models would vanish silently) and out-of-memory errors."""
from __future__ import annotations

import redis

from lstmq.shared.errors import BrokerUnavailable, RedisOutOfMemory

SAFE_POLICY = "noeviction"


def eviction_policy(client: redis.Redis) -> str | None:
    """Redis' maxmemory-policy, or None where CONFIG is not allowed (managed services)."""
    try:
        return client.config_get("maxmemory-policy").get("maxmemory-policy")
    except redis.exceptions.ResponseError:
        return None


def check_eviction_policy(client: redis.Redis, allow_eviction: bool) -> str | None:
    """Refuse a Redis that may evict keys, unless the allow_eviction setting says otherwise."""
    policy = eviction_policy(client)
    if policy is not None and policy != SAFE_POLICY and not allow_eviction:
        raise BrokerUnavailable(
            f"Redis' maxmemory-policy is {policy!r}: it may evict queued work, results and models without a "
            f"word. Set it to {SAFE_POLICY} (redis-cli CONFIG SET maxmemory-policy {SAFE_POLICY}, and in "
            f"redis.conf), or set allow_eviction: true (LSTMQ_ALLOW_EVICTION=true) to accept the risk")
    return policy


# redis-py raises OutOfMemoryError for Redis' "OOM ..." answer (older releases a plain ResponseError).
_OOM_ERROR = getattr(redis.exceptions, "OutOfMemoryError", ())


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, _OOM_ERROR) or (isinstance(error, redis.exceptions.ResponseError)
                                             and str(error).startswith("OOM"))


def out_of_memory(client: redis.Redis, error: BaseException) -> RedisOutOfMemory:
    """The error to raise for Redis' OOM answer, with its memory figures when Redis gives them."""
    try:
        memory = client.info("memory")
        detail = (f"maxmemory {memory.get('maxmemory_human', memory.get('maxmemory'))}, "
                  f"used {memory.get('used_memory_human', memory.get('used_memory'))}, "
                  f"policy {memory.get('maxmemory_policy', '?')}")
    except redis.exceptions.RedisError:
        detail = "maxmemory reached"
    return RedisOutOfMemory(f"Redis is out of memory ({detail}): {error}")
