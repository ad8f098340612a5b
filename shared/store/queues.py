"""Celery's queues as lstmq sees them: messages waiting, the workers consuming each, and the
dead-letter lists of undecodable entries the workers took off them (worker.transport)."""
from __future__ import annotations

from collections.abc import Iterable

import redis

from lstmq.shared.store import keys
from lstmq.shared.store.workers import Workers


class Queues:
    def __init__(self, client: redis.Redis, workers: Workers):
        self.redis, self.workers = client, workers

    def queue_length(self, queue: str) -> int:
        return int(self.redis.llen(keys.celery_queue(queue)))

    def dead_letters(self, queue: str, newest: int = 5) -> tuple[int, list[bytes]]:
        """How many undecodable entries the workers took off `queue` (worker.transport), and the
        newest `newest` of them (raw bytes)."""
        pipe = self.redis.pipeline()
        pipe.llen(keys.dead_letter(queue))
        pipe.lrange(keys.dead_letter(queue), 0, newest - 1)
        count, entries = pipe.execute()
        return int(count), list(entries) if newest > 0 else []

    def purge_dead_letters(self, queue: str) -> int:
        """Delete `queue`'s dead-letter list; returns how many entries went."""
        pipe = self.redis.pipeline()
        pipe.llen(keys.dead_letter(queue))
        pipe.delete(keys.dead_letter(queue))
        return int(pipe.execute()[0])


    def report(self, queues: Iterable[str], newest: int = 0) -> list[dict]:
        """Per Celery queue: messages waiting, live workers consuming it, and its dead-letter list
        (undecodable entries the workers took off it): the count and the newest `newest`, shown as
        Python bytes literals cut at 200 bytes."""
        live = self.workers.live()
        report = []
        for queue in queues:
            count, entries = self.dead_letters(queue, newest)
            report.append({
                "queue": queue, "messages": self.queue_length(queue),
                "consumers": sum(queue in worker.get("queues", ()) for worker in live),
                "dead_letters": count, "dead_letter_key": keys.dead_letter(queue),
                "newest_dead_letters": [repr(entry[:200]) + ("..." if len(entry) > 200 else "") for entry in entries]})
        return report
