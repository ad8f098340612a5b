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

# Registers the job's model once: a redelivered training task gets the same version back. The
# counter never goes back, so a removed version's number is never reused.
# KEYS: job, counter, versions, models, aliases. ARGV: name, meta, now, '1' to make it current.
REGISTER = """
local existing = redis.call('HGET', KEYS[1], 'version')
if existing then return tonumber(existing) end
local version = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[3], version, ARGV[2])
redis.call('SADD', KEYS[4], ARGV[1])
if ARGV[4] == '1' or redis.call('HEXISTS', KEYS[5], 'current') == 0 then
  redis.call('HSET', KEYS[5], 'current', version)
end
redis.call('HSET', KEYS[1], 'version', version, 'model', ARGV[1] .. '@' .. version, 'updated', ARGV[3])
return version
"""

# Point an alias at an existing version. KEYS: versions, aliases. ARGV: version, alias.
# Returns the version it pointed at before (0: none), or -1 when the version does not exist.
PROMOTE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
local before = redis.call('HGET', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return tonumber(before or '0')
"""
ALIAS_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


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
        self._promote = client.register_script(PROMOTE)

    def register(self, job_id: str, name: str, artifact: bytes, meta: dict[str, Any], make_current: bool = True) -> int:
        """Register the job's model as the next version; `make_current` moves the `current` alias
        to it (a model's first version is always current)."""
        digest = self.blobs.put(artifact)
        record = {**meta, "name": name, "artifact_sha256": digest, "artifact_bytes": len(artifact),
                  "job": job_id, "registered": now()}
        return int(self._register(
            keys=[keys.job_key(job_id), keys.model_key(name, "counter"), keys.model_key(name, "versions"),
                  keys.MODELS, keys.model_key(name, "aliases")],
            args=[name, json.dumps(record), now(), "1" if make_current else "0"]))

    def promote(self, name: str, version: int, alias: str = CURRENT) -> int | None:
        """Point `alias` at NAME@VERSION (a rollback is a promote); returns where it pointed before."""
        if not ALIAS_NAME.match(alias):
            raise InputError(f"alias {alias!r} is not valid: use 1-64 letters, digits, '_', '.' or '-', "
                             f"starting with a letter")
        before = int(self._promote(keys=[keys.model_key(name, "versions"), keys.model_key(name, "aliases")],
                                   args=[version, alias]))
        if before < 0:
            raise ModelNotFound(f"model {name!r} has no version {version}")
        return before or None

    def remove(self, name: str, version: int, pinned_by: list[str]) -> None:
        """Delete a version and its artifact; refused while a job that has not ended (`pinned_by`)
        uses it, or an alias points at it and other versions remain. Numbers are never reused."""
        self.meta(name, version)   # ModelNotFound for an unknown version
        if pinned_by:
            raise InputError(f"model {name}@{version} is pinned by job(s) that have not ended: {', '.join(pinned_by)} "
                             f"(wait for them, or lstmq cancel them)")
        aliases = sorted(alias for alias, target in self.aliases(name).items() if target == version)
        last = len(self.redis.hkeys(keys.model_key(name, "versions"))) == 1
        if aliases and not last:
            raise InputError(f"model {name}@{version} is {' and '.join(aliases)}: point the alias at another version "
                             f"first (lstmq models promote {name}@VERSION --alias {aliases[0]})")
        digest = self.meta(name, version)["artifact_sha256"]
        pipe = self.redis.pipeline()
        pipe.hdel(keys.model_key(name, "versions"), version)
        pipe.hlen(keys.model_key(name, "versions"))
        _, left = pipe.execute()
        if not any(meta.get("artifact_sha256") == digest for other in self.names()
                   for meta in self.versions(other).values()):
            self.redis.delete(keys.blob(digest))
        if left == 0:   # the model's last version: its name and aliases go too (its counter stays)
            self.redis.srem(keys.MODELS, name)
            self.redis.delete(keys.model_key(name, "aliases"))

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

    def record_load_failure(self, name: str, version: int, worker: str, reason: str) -> None:
        """A worker could not load NAME@VERSION (kept with the version, shown by models show)."""
        self.redis.hset(keys.model_key(name, "load-errors"), f"{version}:{worker}", f"{now()}\t{reason}")

    def load_failures(self, name: str) -> dict[int, list[dict[str, Any]]]:
        """Version -> [{worker, reason, at}] of the loads that failed."""
        failures: dict[int, list[dict[str, Any]]] = {}
        for field, value in self.redis.hgetall(keys.model_key(name, "load-errors")).items():
            version, _, worker = field.decode().partition(":")
            at, _, reason = value.decode().partition("\t")
            failures.setdefault(int(version), []).append({"worker": worker, "reason": reason, "at": float(at)})
        return failures

    def artifact(self, name: str, version: int) -> bytes:
        """The version's artifact, checked against the sha256 the registry recorded for it."""
        expected = self.meta(name, version)["artifact_sha256"]
        data = self.blobs.get(expected)
        actual = sha256(data)
        if actual != expected:
            raise ArtifactCorrupt(f"model {name}@{version}: its artifact in Redis has sha256 {actual}, "
                                  f"but the registry recorded {expected}; it will not be used")
        return data
