"""The chunk codec (lstmq.shared.store.chunks) and the output lines (lstmq.shared.output): pure,
no Redis. What the producer stores is the seed file's bytes; what a worker stores is finished
JSONL that the producer concatenates."""
import json

import pytest

from lstmq.shared.config import load_settings
from lstmq.shared.output import LineWriter
from lstmq.shared.store.chunks import (INPUT_FORMAT, PLAIN, ZSTD, ChunkInput, ChunkOutput, ChunkResult,
                                       LogprobHistogram, compress, decompress, pack_input, unpack_input)

GENERATION = load_settings(environ={}).generation_params().replace(seed=1)


def test_a_chunk_input_is_the_seed_bytes_packed():
    data = "".join(f"Sherlock «Holmes» {i} — 福尔摩斯\r\n" for i in range(300)).encode()
    raw = pack_input(1_000_001, 300, data)
    assert raw[:1] == INPUT_FORMAT and len(raw) < len(data) / 4
    assert unpack_input(raw) == (1_000_001, 300, data)
    tiny = pack_input(1, 1, b"a\n")      # too small to pay: kept as it is
    assert tiny.endswith(PLAIN + b"a\n") and unpack_input(tiny) == (1, 1, b"a\n")


def test_compression_is_used_only_where_it_pays():
    text = b"the door was open " * 100
    assert compress(text)[:1] == ZSTD and decompress(compress(text)) == text
    noise = bytes(range(256)) * 2
    import os
    random_bytes = os.urandom(4096)
    assert compress(random_bytes)[:1] == PLAIN and decompress(compress(random_bytes)) == random_bytes
    assert decompress(compress(noise)) == noise
    with pytest.raises(ValueError, match="unknown codec"):
        decompress(b"\x09abc")


def test_a_chunk_output_round_trips_with_its_histogram():
    histogram = LogprobHistogram()
    for logprob in (-1.23456, -1.23456, -0.5, -45.0, float("nan")):
        histogram.add(logprob, round(logprob, 4))
    out = "".join(json.dumps({"id": i, "continuation": "é 福"}, ensure_ascii=False) + "\n" for i in range(200)).encode()
    output = ChunkOutput(7, 210, out, 200, b'{"id": 9, "line": 9, "error": "x"}\n', 1, histogram.to_value())
    back = ChunkOutput.unpack(output.pack())
    assert (back.first_line, back.count, back.out, back.lines, back.err, back.errors) == (7, 210, out, 200,
                                                                                         output.err, 1)
    assert back.hist["lines"] == 4 and back.hist["outside"] == [[-45.0, 1]] or back.hist["outside"] == [(-45.0, 1)]


@pytest.mark.parametrize("raw", [b'[{"line": 1}]', b"\x07junk", b"\x01\x93", b""])
def test_anything_but_a_stored_chunk_is_refused_with_a_reason(raw):
    with pytest.raises(ValueError, match="not a stored chunk"):
        unpack_input(raw)
    with pytest.raises(ValueError, match="not a stored chunk"):
        ChunkOutput.unpack(raw)


def test_output_lines_are_what_json_dumps_writes():
    """The worker writes each line by template; it must be byte for byte json.dumps(record,
    ensure_ascii=False), with odd ids and prompts (non-ASCII, quotes, tabs), per-prompt
    parameters, several samples, a failed prompt and a missing logprob."""
    defaults = GENERATION.to_dict()
    special = {**defaults, "words": 3, "temperature": 0.7, "top_k": 5, "n": 2}
    ids = [1, "trois", -7, "", "8", 2**70, 7]
    prompts = ["Sherlock «Holmes» — 福尔摩斯 🕵", 'quote " and \\ back\tslash', "x" * 300, "a", "b", "c", "d"]
    chunk = ChunkInput([1, 2, 3, 4, 5, 6, 9], ids, prompts, defaults, {1: {"words": 3, "temperature": 0.7, "top_k": 5,
                                                                         "n": 2}, 5: {"seed": 99}})
    samples = ["s0", "s1a", "s1b", "s2 «ü»", "s4", "s5", "s6"]
    counts = [1, 2, 1, 0, 1, 1, 1]
    logprobs = [-1.23456, -0.5, -2.0, -11.99999, None, -3.0, -0.00001]
    result = ChunkResult(samples, counts, logprobs, {2: ["zzyzx", "ünï"]}, {3: "prompt has no words"})
    histogram = LogprobHistogram()
    text, count = LineWriter("m@1").lines(chunk, result, histogram)
    expected, at = [], 0
    for position, (identifier, prompt) in enumerate(zip(ids, prompts)):
        if position == 3:
            continue
        params = {**defaults, **chunk.overrides.get(position, {})}
        for sample in range(counts[position]):
            logprob = logprobs[at]
            expected.append(json.dumps({"id": identifier, "prompt": prompt, "continuation": samples[at], "model": "m@1",
                                        "seed": params["seed"], "sample": sample,
                                        "params": {key: value for key, value in params.items() if key != "seed"},
                                        "unknown_words": ["zzyzx", "ünï"] if position == 2 else [],
                                        "logprob": None if logprob is None else round(logprob, 4)},
                                       ensure_ascii=False) + "\n")
            at += 1
    assert text == "".join(expected) and count == len(expected) == 7
    assert histogram.lines == 6 and special["n"] == 2   # one line has no logprob
