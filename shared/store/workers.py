"""Live workers: each worker process renews a heartbeat (its name, host, pid, device, queues);
whoever waits on a queue can tell whether anything consumes it."""
from __future__ import annotations

import json
import time
from typing import Any

import redis

from lstmq.shared.store import keys


class Workers:
    def __init__(self, client: redis.Redis):
        self.redis = client

    def heartbeat(self, name: str, info: dict[str, Any], ttl: float) -> None:
        """Say that worker `name` is alive; it counts as gone `ttl` seconds after its last heartbeat."""
        pipe = self.redis.pipeline()
        pipe.zadd(keys.WORKERS, {name: time.time()})
        pipe.set(keys.worker_key(name), json.dumps({**info, "name": name}), px=int(ttl * 1000))
        pipe.execute()

    def leave(self, name: str) -> None:
        pipe = self.redis.pipeline()
        pipe.zrem(keys.WORKERS, name)
        pipe.delete(keys.worker_key(name))
        pipe.execute()

    def hold(self, name: str, job_id: str, member: int | str, ttl: float) -> None:
        """Worker `name` works on (job, member) now; forgotten `ttl` seconds after the last call."""
        self.redis.set(keys.worker_key(name, "current"), json.dumps({"job": job_id, "member": str(member)}),
                       px=int(ttl * 1000))

    def release(self, name: str) -> None:
        self.redis.delete(keys.worker_key(name, "current"))

    def holding(self, name: str) -> tuple[str, str] | None:
        """The (job, member) worker `name` works on, if any."""
        raw = self.redis.get(keys.worker_key(name, "current"))
        if raw is None:
            return None
        current = json.loads(raw)
        return current["job"], current["member"]

    def live(self) -> list[dict[str, Any]]:
        """Workers whose heartbeat has not expired: their description, `last_heartbeat` (Unix
        seconds) and `current` (the job and chunk or 'train' they hold, if any). A read: the index
        keeps expired workers until prune()."""
        beats = {name.decode(): score for name, score in self.redis.zrange(keys.WORKERS, 0, -1, withscores=True)}
        if not beats:
            return []
        names = sorted(beats)
        described = self.redis.mget([keys.worker_key(name) for name in names])
        current = self.redis.mget([keys.worker_key(name, "current") for name in names])
        return [{**json.loads(raw), "last_heartbeat": beats[name], "current": json.loads(held) if held else None}
                for name, raw, held in zip(names, described, current) if raw is not None]

    def prune(self) -> int:
        """Drop the workers whose heartbeat expired from the index (the watchdog does, every pass:
        live() is a read); returns how many went."""
        names = [name.decode() for name in self.redis.zrange(keys.WORKERS, 0, -1)]
        if not names:
            return 0
        gone = [name for name, raw in zip(names, self.redis.mget([keys.worker_key(name) for name in names]))
                if raw is None]
        return int(self.redis.zrem(keys.WORKERS, *gone)) if gone else 0

    def consuming(self, queue: str) -> list[dict[str, Any]]:
        return [worker for worker in self.live() if queue in worker.get("queues", ())]
