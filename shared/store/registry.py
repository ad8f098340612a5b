"""The model registry: name -> versions 1, 2, ... (meta + artifact blob), and aliases
(`current` = the newest registered version). Artifacts never expire."""
from __future__ import annotations

import json
import re
from typing import Any

import redis

from lstmq.shared.errors import ArtifactCorrupt, InputError, ModelNotFound
from lstmq.shared.store import keys
from lstmq.shared.store.blobs import Blobs, sha256
from lstmq.shared.store.clock import now

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESERVED_MODEL_NAMES = {"export", "list", "show"}   # `lstmq models` subcommands
CURRENT = "current"

# Registers the job's model once: a redelivered training task gets the same version back.
# KEYS: job, counter, versions, models, aliases. ARGV: name, meta, now.
REGISTER = """
local existing = redis.call('HGET', KEYS[1], 'version')
if existing then return tonumber(existing) end
local version = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[3], version, ARGV[2])
redis.call('SADD', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[5], 'current', version)
redis.call('HSET', KEYS[1], 'version', version, 'model', ARGV[1] .. '@' .. version, 'updated', ARGV[3])
return version
"""


def check_model_name(name: str) -> str:
    if not MODEL_NAME.match(name) or name in RESERVED_MODEL_NAMES:
        raise InputError(f"model name {name!r} is not valid: use 1-64 letters, digits, '_', '.' or '-', "
                         f"starting with a letter or digit (and not {', '.join(sorted(RESERVED_MODEL_NAMES))})")
    return name


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    """'name' -> (name, None); 'name@3' -> (name, '3'); 'name@current' -> (name, 'current')."""
    name, at, version = spec.partition("@")
    check_model_name(name)
    if at and not version:
        raise InputError(f"model {spec!r}: missing version after '@' (use NAME or NAME@VERSION)")
    return name, version or None


class Registry:
    def __init__(self, client: redis.Redis, blobs: Blobs):
        self.redis, self.blobs = client, blobs
        self._register = client.register_script(REGISTER)

    def register(self, job_id: str, name: str, artifact: bytes, meta: dict[str, Any]) -> int:
        digest = self.blobs.put(artifact)
        record = {**meta, "name": name, "artifact_sha256": digest, "artifact_bytes": len(artifact),
                  "job": job_id, "registered": now()}
        return int(self._register(
            keys=[keys.job_key(job_id), keys.model_key(name, "counter"), keys.model_key(name, "versions"),
                  keys.MODELS, keys.model_key(name, "aliases")],
            args=[name, json.dumps(record), now()]))

    def names(self) -> list[str]:
        return sorted(name.decode() for name in self.redis.smembers(keys.MODELS))

    def versions(self, name: str) -> dict[int, dict[str, Any]]:
        raw = self.redis.hgetall(keys.model_key(name, "versions"))
        return dict(sorted((int(version), json.loads(meta)) for version, meta in raw.items()))

    def aliases(self, name: str) -> dict[str, int]:
        raw = self.redis.hgetall(keys.model_key(name, "aliases"))
        return {alias.decode(): int(version) for alias, version in raw.items()}

    def resolve(self, spec: str) -> tuple[str, int]:
        """'name', 'name@alias' or 'name@N' -> (name, version), or ModelNotFound."""
        name, version = parse_model_spec(spec)
        versions = self.redis.hkeys(keys.model_key(name, "versions"))
        if not versions:
            known = ", ".join(self.names()) or "none yet"
            raise ModelNotFound(f"no model named {name!r} in the registry (models: {known})")
        if version is None or not version.isdigit():
            alias = version or CURRENT
            resolved = self.redis.hget(keys.model_key(name, "aliases"), alias)
            if resolved is None:
                raise ModelNotFound(f"model {name!r} has no alias {alias!r}")
            return name, int(resolved)
        if version.encode() not in versions:
            available = ", ".join(str(v) for v in sorted(int(v) for v in versions))
            raise ModelNotFound(f"model {name!r} has no version {version} (versions: {available})")
        return name, int(version)

    def meta(self, name: str, version: int) -> dict[str, Any]:
        raw = self.redis.hget(keys.model_key(name, "versions"), version)
        if raw is None:
            raise ModelNotFound(f"model {name}@{version} is not in the registry")
        return json.loads(raw)

    def artifact(self, name: str, version: int) -> bytes:
        """The version's artifact, checked against the sha256 the registry recorded for it."""
        expected = self.meta(name, version)["artifact_sha256"]
        data = self.blobs.get(expected)
        actual = sha256(data)
        if actual != expected:
            raise ArtifactCorrupt(f"model {name}@{version}: its artifact in Redis has sha256 {actual}, "
                                  f"but the registry recorded {expected}; it will not be used")
        return data
