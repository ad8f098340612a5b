"""Content-addressed bytes: corpora (expire after result_ttl) and model artifacts (kept)."""
from __future__ import annotations

import hashlib

import redis

from lstmq.shared.store import keys


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Blobs:
    def __init__(self, client: redis.Redis):
        self.redis = client

    def put(self, data: bytes, ttl: int | None = None) -> str:
        """Store bytes under their sha256; `ttl` None keeps them for good (model artifacts)."""
        digest = sha256(data)
        key = keys.blob(digest)
        if ttl is None:
            pipe = self.redis.pipeline()
            pipe.set(key, data)
            pipe.persist(key)
            pipe.execute()
        else:
            self.redis.set(key, data, ex=ttl)
        return digest

    def get(self, digest: str) -> bytes:
        data = self.redis.get(keys.blob(digest))
        if data is None:
            raise LookupError(f"blob {digest} is not in Redis (expired after result_ttl, or never uploaded)")
        return data
