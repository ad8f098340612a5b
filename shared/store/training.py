"""A training job's state beside its record: the per-epoch history, the latest checkpoint to
resume from, and the lock that keeps one worker on the job (with the Lua scripts that guard it)."""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from typing import Any

import redis

from lstmq.shared.errors import JobBusy
from lstmq.shared.params import Checkpoint
from lstmq.shared.store import keys
from lstmq.shared.store.clock import now

log = logging.getLogger("lstmq.store")

LOCK_TTL_S = 30    # a training job's lock expires this long after its worker stopped refreshing it

# KEYS: lock. ARGV: owner.
RELEASE_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lock. ARGV: owner, ttl in ms.
REFRESH_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Training:
    def __init__(self, client: redis.Redis, ttl: int):
        self.redis, self.ttl = client, ttl
        self._release_lock = client.register_script(RELEASE_LOCK)
        self._refresh_lock = client.register_script(REFRESH_LOCK)

    # -- history -------------------------------------------------------------------------------
    def add_epoch(self, job_id: str, record: dict[str, Any]) -> None:
        """Record a finished epoch: the job's latest figures, and the per-epoch history."""
        fields = {key: record[key] for key in ("epoch", "epochs", "loss", "val_loss", "val_perplexity") if key in record}
        history = keys.job_key(job_id, "history")
        pipe = self.redis.pipeline()
        pipe.hset(keys.job_key(job_id), mapping={**fields, "updated": now()})
        pipe.rpush(history, json.dumps({key: value for key, value in record.items() if key != "event"}))
        pipe.expire(history, self.ttl)
        pipe.execute()

    def complete_history(self, job_id: str, history: list[dict[str, Any]]) -> int:
        """Add the epochs of `history` (the worker's own, in memory) that the stored history lacks:
        an epoch record written to a primary that was lost before it reached its replica (Redis
        Sentinel) comes back here. Returns how many were added."""
        stored = {record["epoch"] for record in self.history(job_id)}
        missing = [record for record in history if record.get("epoch") not in stored]
        if missing:
            key = keys.job_key(job_id, "history")
            pipe = self.redis.pipeline()
            pipe.rpush(key, *(json.dumps({k: v for k, v in record.items() if k != "event"}) for record in missing))
            pipe.expire(key, self.ttl)
            pipe.execute()
        return len(missing)

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """Per-epoch records of a training job; a resumed job's epochs appear once each."""
        by_epoch = {}
        for raw in self.redis.lrange(keys.job_key(job_id, "history"), 0, -1):
            record = json.loads(raw)
            by_epoch[record["epoch"]] = record
        return [by_epoch[epoch] for epoch in sorted(by_epoch)]

    # -- checkpoints -------------------------------------------------------------------------------
    def save_checkpoint(self, job_id: str, epoch: int, model_bytes: bytes, history: list[dict[str, Any]],
                        best: bytes | None = None) -> None:
        """The latest epoch's model; `best` (the best validation epoch's model) when it changed."""
        key = keys.job_key(job_id, "checkpoint")
        mapping: dict[str, Any] = {"epoch": epoch, "model": model_bytes, "history": json.dumps(history)}
        if best is not None:
            mapping["best"] = best
        pipe = self.redis.pipeline()
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, self.ttl)
        pipe.execute()

    def load_checkpoint(self, job_id: str) -> Checkpoint | None:
        raw = self.redis.hgetall(keys.job_key(job_id, "checkpoint"))
        if not raw:
            return None
        return Checkpoint(epoch=int(raw[b"epoch"]), model=raw[b"model"], history=json.loads(raw[b"history"]),
                          best=raw.get(b"best"))

    def drop_checkpoint(self, job_id: str) -> None:
        self.redis.delete(keys.job_key(job_id, "checkpoint"))

    # -- the lock ------------------------------------------------------------------------------------
    def acquire_lock(self, job_id: str, owner: str, ttl_s: int = LOCK_TTL_S) -> bool:
        return bool(self.redis.set(keys.job_key(job_id, "lock"), owner, nx=True, px=ttl_s * 1000))

    def lock_holder(self, job_id: str) -> str | None:
        holder = self.redis.get(keys.job_key(job_id, "lock"))
        return None if holder is None else holder.decode()

    def refresh_lock(self, job_id: str, owner: str, ttl_s: int = LOCK_TTL_S) -> bool:
        return bool(self._refresh_lock(keys=[keys.job_key(job_id, "lock")], args=[owner, ttl_s * 1000]))

    def release_lock(self, job_id: str, owner: str) -> None:
        self._release_lock(keys=[keys.job_key(job_id, "lock")], args=[owner])

    def lock(self, job_id: str) -> TrainingLock:
        return TrainingLock(self, job_id)


class TrainingLock:
    """`with training.lock(job_id):` holds the job's lock while the block runs, refreshed by a
    heartbeat thread. The thread dies with the process, so after a crash the lock expires within
    LOCK_TTL_S and a redelivered task can take over; a lock left by a dead process on this host
    is taken over at once. Raises JobBusy when another live worker holds it."""

    def __init__(self, training: Training, job_id: str):
        self.training, self.job_id = training, job_id
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stopped = threading.Event()
        self.heartbeat = threading.Thread(target=self._beat, daemon=True, name=f"lock-{job_id}")

    def __enter__(self) -> TrainingLock:
        if not self._take():
            raise JobBusy(f"train job {self.job_id} is running on another worker")
        self.heartbeat.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.stopped.set()
        self.training.release_lock(self.job_id, self.owner)

    def _take(self) -> bool:
        if self.training.acquire_lock(self.job_id, self.owner):
            return True
        holder = self.training.lock_holder(self.job_id)
        if holder:
            host, _, rest = holder.partition(":")
            pid = rest.partition(":")[0]
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                log.info("train job %s: its previous worker process %s is gone; taking over", self.job_id, pid)
                self.training.release_lock(self.job_id, holder)
                return self.training.acquire_lock(self.job_id, self.owner)
        return False

    def _beat(self) -> None:
        while not self.stopped.wait(LOCK_TTL_S / 3):
            try:
                if not self.training.refresh_lock(self.job_id, self.owner):
                    log.warning("lost the lock of train job %s", self.job_id)
            except redis.exceptions.RedisError as error:   # a Redis hiccup: try again at the next beat
                log.warning("could not refresh the lock of train job %s: %s", self.job_id, error)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
