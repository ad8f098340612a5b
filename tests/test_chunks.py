"""The chunk codec (lstmq.shared.store.chunks): pure, no Redis. What the producer writes is what
a worker reads, column by column; what a worker writes is what the producer collects."""
import json

import pytest

from lstmq.shared.config import load_settings
from lstmq.shared.messages import PromptItem
from lstmq.shared.params import prompt_key
from lstmq.shared.store.chunks import (FORMAT_MSGPACK, FORMAT_MSGPACK_ZLIB, ChunkBuilder, ChunkInput, ChunkResult,
                                       encode_items, encode_results, unpack)

GENERATION = load_settings(environ={}).generation_params().replace(seed=1)


def chunk_items(params_for_line):
    """Item dicts with odd ids and prompts (non-ASCII, quotes, tabs, long), lines with gaps."""
    odd_ids = {3: "trois", 4: -7, 5: None, 6: -(2**63), 7: "", 8: "8", 9: 2**64 - 1}
    items = []
    for line in [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 20]:   # a gap: blank or bad lines between
        identifier = odd_ids.get(line, line)
        prompt = {1: "Sherlock «Holmes» — 福尔摩斯 🕵", 2: 'quote " and \\ back\tslash', 11: "x" * 300}.get(line, f"word{line}")
        items.append(PromptItem(line, identifier, prompt, prompt_key(identifier), params_for_line(line)).to_dict())
    return items


def test_chunk_items_round_trip_in_the_compact_format():
    special = GENERATION.replace(words=3, temperature=0.7, top_k=5, n=2)
    items = chunk_items(lambda line: special if line in (2, 12) else (GENERATION.replace(seed=9) if line == 4 else GENERATION))
    raw = encode_items(items)
    assert raw[:1] in (FORMAT_MSGPACK, FORMAT_MSGPACK_ZLIB) and len(raw) < len(json.dumps(items)) / 3
    columns = ChunkInput.decode(raw)
    assert columns.items() == items                   # what a worker reads: the same dicts, keys and all
    assert columns.lines == [item["line"] for item in items] and columns.ids == [item["id"] for item in items]
    assert sorted(columns.overrides) == [1, 3, 10]    # only the prompts whose parameters differ
    assert columns.overrides[3] == {"seed": 9} and columns.params(0) is columns.defaults


def test_an_id_beyond_64_bits_round_trips():
    """A .jsonl id may be any integer; msgpack holds 64 bits, the codec keeps the rest as digits."""
    items = chunk_items(lambda line: GENERATION)
    items[0] = {**items[0], "id": 2**70, "key": prompt_key(2**70)}
    items[1] = {**items[1], "id": -(2**90), "key": prompt_key(-(2**90))}
    assert ChunkInput.decode(encode_items(items)).items() == items


def test_a_txt_chunk_keeps_no_ids_and_no_parameters_per_prompt():
    builder = ChunkBuilder(GENERATION.to_dict())
    for line in [*range(1, 200), *range(250, 300)]:
        builder.add(line, line, "the")
    value = unpack(builder.encode())
    assert value["lines"] == [1, 199, 250, 50] and "ids" not in value and "overrides" not in value
    decoded = ChunkInput.decode(builder.encode())
    assert decoded.ids == decoded.lines == [*range(1, 200), *range(250, 300)]


def test_chunk_results_round_trip_in_the_compact_format():
    results = [{"unknown": [], "samples": ["the door"], "logprobs": [-1.23455]},
               {"error": "prompt has no words"},
               {"unknown": ["zzyzx", "ünïcode"], "samples": ["a b", "c d", "é 福"], "logprobs": [-0.5, -2.0, -11.99999]},
               {"unknown": [], "samples": ["no score"]},
               {"unknown": [], "samples": [], "logprobs": []}]
    raw = encode_results(results)
    assert len(raw) < len(json.dumps(results))
    decoded = ChunkResult.decode(raw).results()
    assert decoded[0] == results[0] and decoded[1] == results[1] and decoded[2] == results[2]
    assert decoded[3] == {"unknown": [], "samples": ["no score"], "logprobs": [None]} and decoded[4] == results[4]
    # logprobs that are not 5-decimal values (or not finite) are kept exactly, as floats
    odd = [{"unknown": [], "samples": ["x"], "logprobs": [-0.123456789]},
           {"unknown": [], "samples": ["y"], "logprobs": [float("-inf")]}]
    assert ChunkResult.decode(encode_results(odd)).results() == odd
    # one sample per prompt, no errors: no per-prompt counts are kept
    plain = [{"unknown": [], "samples": [f"w{index}"], "logprobs": [-index / 8]} for index in range(300)]
    raw = encode_results(plain)
    assert "counts" not in unpack(raw) and ChunkResult.decode(raw).results() == plain
    # columns (what a worker builds, no dict per item): the same stored form
    columns = ChunkResult(["a", "b"], None, [-0.5, -1.25], {1: ["zz"]}, {})
    assert len(columns) == 2 and ChunkResult.decode(columns.encode()).results() == [
        {"unknown": [], "samples": ["a"], "logprobs": [-0.5]}, {"unknown": ["zz"], "samples": ["b"], "logprobs": [-1.25]}]


@pytest.mark.parametrize("raw", [b'[{"line": 1}]', b"\x07junk", b""])
def test_anything_but_a_stored_chunk_is_refused_with_a_reason(raw):
    with pytest.raises(ValueError, match="not a stored chunk"):
        ChunkInput.decode(raw)
    with pytest.raises(ValueError, match="not a stored chunk"):
        ChunkResult.decode(raw)
