"""Typed parameters: the network and its training (ModelParams), how one prompt is continued
(GenerationParams), and the input limits (Limits). Frozen dataclasses with no defaults of their
own: the one set of defaults is config/default.yaml, read by shared.config (Settings.model_params,
generation_params, limits). Generation parameters are validated the same way by the producer
(per seed line) and by the worker (a chunk is never trusted). No TensorFlow."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

from lstmq.shared.config import check_value
from lstmq.shared.errors import InputError

P = TypeVar("P", bound="_Params")


class _Params:
    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))  # type: ignore[arg-type]

    # Keys added after records were first written, with the value that reproduces the old
    # behaviour: a record (job, artifact) written before a key existed still loads.
    ADDED_KEYS: ClassVar[dict[str, Any]] = {}

    @classmethod
    def from_mapping(cls: type[P], values: Mapping[str, Any]) -> P:
        """The parameters from a mapping holding (at least) every key but ADDED_KEYS, which take
        their old-behaviour values when missing; extra keys are ignored."""
        return cls(**{key: values[key] if key in values or key not in cls.ADDED_KEYS else cls.ADDED_KEYS[key]
                      for key in cls.keys()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def replace(self: P, **changes: Any) -> P:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclasses.dataclass(frozen=True)
class ModelParams(_Params):
    """The network and how it is trained; a training job carries them, meta.json records them."""
    embedding_dim: int          # width of the word embedding
    lstm_units: int             # LSTM state size
    context_window: int         # tokens of context per training sequence
    max_vocab: int              # keep the N most frequent words, 0 = all
    optimizer: str              # adam, sgd or rmsprop
    learning_rate: float
    epochs: int
    batch_size: int             # sequences (corpus lines) per training step
    validation_split: float     # fraction of corpus lines held out
    early_stopping_patience: int
    shuffle_seed: int
    lstm_layers: int            # stacked LSTM layers (1 = the seed's network)
    dropout: float              # fraction dropped on the LSTM layers' inputs and the top one's outputs, training only
    clipnorm: float             # clip the gradient's global norm to this before each step, 0 = off

    # jobs and artifacts written before stacking, dropout and clipping existed
    ADDED_KEYS: ClassVar[dict[str, Any]] = {"lstm_layers": 1, "dropout": 0.0, "clipnorm": 0.0}


# Which random stream sampling draws from; a sampled continuation is reproducible only under the
# same stream. 1: a numpy Philox generator per row keyed by (seed, prompt key, sample index).
# 2 (now): a SplitMix64 counter hash of (seed, prompt key, sample index, word index), computed
# vectorized inside the compiled decoding loop (lstmq.worker.engine.stream.row_uniforms gives its numbers).
# Either way a pure function of those values: batch composition, chunking and order never matter.
SAMPLING_STREAM = 2


@dataclasses.dataclass(frozen=True)
class GenerationParams(_Params):
    """How one prompt is continued. `seed` is None only in job defaults that have not drawn one."""
    words: int
    temperature: float          # 0 = greedy
    top_k: int                  # 0 = off
    top_p: float                # 1 = off
    n: int                      # samples per prompt
    seed: int | None

    @property
    def sampling(self) -> bool:
        return self.temperature > 0


@dataclasses.dataclass(frozen=True)
class Limits(_Params):
    """Upper bounds on what one seed line may ask for."""
    max_words: int
    max_n: int
    max_prompt_chars: int
    max_line_bytes: int


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A training job's state after an epoch, to resume from."""
    epoch: int
    model: bytes                  # the training model with its optimizer state (model.keras bytes)
    history: list[dict[str, Any]]
    best: bytes | None = None     # the best validation epoch's model, when early stopping is on


def check_generation_params(values: Mapping[str, Any], limits: Limits, source: str = "") -> GenerationParams:
    """The parameters with types checked and ranges enforced; InputError names the field."""
    prefix = f"{source}: " if source else ""
    checked = {}
    for key in GenerationParams.keys():
        if key not in values:
            raise InputError(f"{prefix}missing field {key!r}")
        checked[key] = check_value(key, values[key], source, noun="field", error=InputError)
    if checked["words"] > limits.max_words:
        raise InputError(f"{prefix}field 'words' must be <= max_words ({limits.max_words}), got {checked['words']}")
    if checked["n"] > limits.max_n:
        raise InputError(f"{prefix}field 'n' must be <= max_n ({limits.max_n}), got {checked['n']}")
    if checked["seed"] is None:
        raise InputError(f"{prefix}field 'seed' must be an integer >= 0, got null")
    return GenerationParams(**checked)


def prompt_key(prompt_id: Any) -> int:
    """The prompt's key in the random stream: a non-negative integer id is its own key, anything
    else is hashed. Keyed by id (a .txt file's id is its line number), a prompt keeps its samples
    when the file is split, reordered or chunked differently."""
    if isinstance(prompt_id, int) and not isinstance(prompt_id, bool) and 0 <= prompt_id < 2**63:
        return prompt_id
    digest = hashlib.sha256(json.dumps(prompt_id, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)
