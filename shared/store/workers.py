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

    def live(self) -> list[dict[str, Any]]:
        """Workers whose heartbeat has not expired, with their description."""
        names = [name.decode() for name in self.redis.zrange(keys.WORKERS, 0, -1)]
        if not names:
            return []
        described = self.redis.mget([keys.worker_key(name) for name in names])
        gone = [name for name, raw in zip(names, described) if raw is None]
        if gone:
            self.redis.zrem(keys.WORKERS, *gone)
        return [json.loads(raw) for raw in described if raw is not None]

    def consuming(self, queue: str) -> list[dict[str, Any]]:
        return [worker for worker in self.live() if queue in worker.get("queues", ())]
