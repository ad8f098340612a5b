"""Named exceptions. User-facing errors subclass ValueError or LookupError so that callers that
only know the builtin kinds still catch them."""
from __future__ import annotations


class LstmqError(Exception):
    """Base class of every error lstmq raises on purpose."""


class ConfigError(LstmqError, ValueError):
    """A setting is unknown, of the wrong type or out of range."""


class InputError(LstmqError, ValueError):
    """A seed line, a corpus or a parameter cannot be used."""


class CorpusError(InputError):
    """The training corpus cannot be used (empty, not UTF-8 text, too large, too few words)."""


class ModelNotFound(LstmqError, LookupError):
    """No such model name, version or alias in the registry."""


class JobNotFound(LstmqError, LookupError):
    """No such job id (never submitted, or expired after result_ttl)."""


class JobFailed(LstmqError):
    """A job ended in the failed state; `status`: its status object, when known."""

    def __init__(self, message: str, status: dict | None = None):
        super().__init__(message)
        self.status = status


class JobCancelled(LstmqError):
    """A job was cancelled; `status`: its status object, when known."""

    def __init__(self, message: str, status: dict | None = None):
        super().__init__(message)
        self.status = status


class UsageError(LstmqError, ValueError):
    """A command or call that cannot be carried out as given (conflicting options, a broker URL
    lstmq cannot use)."""


class BrokerUnavailable(LstmqError):
    """Redis cannot be reached at the configured URL."""


class BadMessage(LstmqError, ValueError):
    """A task message that cannot run (wrong arguments, no job id): rejected, never retried."""


class JobBusy(LstmqError):
    """Another live worker holds the job (a redelivered message while the first still runs)."""


class RedisOutOfMemory(LstmqError):
    """Redis refused a write: used memory is over maxmemory (with the noeviction policy)."""


class ArtifactCorrupt(LstmqError):
    """A model artifact's bytes do not match the sha256 the registry recorded for them."""
