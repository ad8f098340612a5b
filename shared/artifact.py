"""The self-describing model artifact: a zip of model.keras, vocab.json (index = token id) and
meta.json (the network, the tokenizer, the training parameters, metrics, the corpus hash, how a
context is fed). Reading, writing and exporting it needs no TensorFlow: the producer's
`models export` and the registry use this module, the worker's engine (lstmq.worker.engine)
makes and loads the model.keras inside."""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

ARTIFACT_FILES = ("model.keras", "vocab.json", "meta.json")
FORMAT = "lstmq-artifact/1"
# How a context is fed to model.keras; recorded in meta.json so any consumer can do the same.
CONTEXT_FEED = {
    "input": "token ids (batch, time), int32; id 0 = padding, id 1 = <unk>",
    "padding": "right: pad with id 0 after the tokens; padding is masked (mask_zero), so padding "
               "never changes the result; left padding gives the same result on CPU but cuDNN "
               "(GPU) accepts only right padding",
    "length": "any: the whole context is read, no truncation to the training window",
    "output": "next-word probabilities (batch, vocab) after the last real token (softmax)",
}


def pack_artifact(model_bytes: bytes, vocabulary: list[str], meta: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("model.keras", model_bytes)
        archive.writestr("vocab.json", json.dumps(vocabulary, ensure_ascii=False))
        archive.writestr("meta.json", json.dumps({"format": FORMAT, **meta}, indent=2, sort_keys=True))
    return buffer.getvalue()


def read_artifact(data: bytes) -> tuple[bytes, list[str], dict[str, Any]]:
    """(model.keras bytes, vocabulary, meta) of a packed artifact."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        missing = [name for name in ARTIFACT_FILES if name not in names]
        if missing:
            raise ValueError(f"model artifact is missing {', '.join(missing)}")
        return (archive.read("model.keras"), json.loads(archive.read("vocab.json")),
                json.loads(archive.read("meta.json")))


def export_artifact(data: bytes, directory: str | os.PathLike[str]) -> list[Path]:
    """Write model.keras, vocab.json and meta.json into `directory` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for name in ARTIFACT_FILES:
            target = directory / name
            temporary = target.with_name(f".{name}.partial")
            temporary.write_bytes(archive.read(name))
            os.replace(temporary, target)
            written.append(target)
    return written
