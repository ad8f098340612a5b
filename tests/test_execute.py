"""The worker-side chunk pipeline (worker.jobs.chunks): pipelined slices, parameter checks once per
set, and a batch too big for the device split and retried. Unit tests with a stand-in decoder; the
real decoder and worker run in tests/test_integration.py."""
import pytest

from lstmq.shared.config import load_settings
from lstmq.worker.jobs.chunks import decode_items
from lstmq.shared.messages import PromptItem
from lstmq.shared.store.chunks import ChunkInput, ChunkResult
from lstmq.shared.text import Vocabulary


class ResourceExhaustedError(Exception):
    """Named as TensorFlow's: what a GPU raises for a batch that does not fit in its memory."""


class StandInDecoder:
    """Continues each prompt with its own words reversed; refuses batches above `fits` rows."""

    def __init__(self, vocabulary, max_rows, fits=None):
        self.vocabulary, self.max_rows, self.fits, self.calls = vocabulary, max_rows, fits, []

    def continuations_scored(self, requests):
        self.calls.append(len(requests))
        if self.fits is not None and len(requests) > self.fits:
            raise ResourceExhaustedError(f"OOM when allocating tensor with shape[{len(requests)},8201]")
        return [[(" ".join(reversed(self.vocabulary.decode(request.ids))), -1.5)] * request.n for request in requests]


@pytest.fixture
def setting():
    return load_settings()


@pytest.fixture
def vocabulary():
    return Vocabulary(["<pad>", "<unk>", "the", "door", "holmes", "said"])


def items(settings, count):
    params = settings.generation_params().replace(words=3, seed=7)
    prompts = ["the door", "holmes said", "", "the holmes door said"]
    made = [PromptItem(line=i + 1, id=f"p{i}", prompt=prompts[i % 4] or "x", key=i, params=params).to_dict()
            for i in range(count)]
    for index in range(2, count, 4):
        made[index]["prompt"] = ""                      # an item that cannot be used
    made[-1]["params"] = {**made[-1]["params"], "words": 0}   # bad parameters, on its own
    return made


def columns(item_dicts):
    """The chunk as a worker has it once it parsed its lines: columns, each prompt's parameters
    those of the first item unless they differ."""
    defaults = item_dicts[0]["params"] if item_dicts else {}
    overrides = {}
    for position, item in enumerate(item_dicts):
        changed = {key: value for key, value in item["params"].items()
                   if defaults.get(key) != value or type(defaults.get(key)) is not type(value)}
        if changed:
            overrides[position] = changed
    return ChunkInput([item["line"] for item in item_dicts], [item["id"] for item in item_dicts],
                      [item["prompt"] for item in item_dicts], defaults, overrides)


def test_slices_are_decoded_in_order_and_every_item_has_its_outcome(setting, vocabulary):
    decoder = StandInDecoder(vocabulary, max_rows=3)
    chunk = items(setting, 10)
    result, words = decode_items(columns(chunk), decoder, setting)
    results = result.results()
    assert decoder.calls == [2, 3, 2]   # slices of 3 items, less the unusable ones (the last slice: none)
    assert len(results) == 10
    assert results[0] == {"unknown": [], "samples": ["door the"], "logprobs": [-1.5]}
    assert results[1]["samples"] == ["said holmes"] and results[3]["samples"] == ["said door holmes the"]
    assert results[2] == {"error": "field 'prompt' must be a non-empty string"}
    assert "field 'words'" in results[9]["error"]
    assert words == 3 * sum("samples" in result for result in results)


def test_a_batch_too_big_for_the_device_is_split_and_nothing_is_lost(setting, vocabulary):
    decoder = StandInDecoder(vocabulary, max_rows=64, fits=5)
    chunk = [item for item in items(setting, 41)[:40] if item["prompt"]]
    results = decode_items(columns(chunk), decoder, setting)[0].results()
    assert [result["samples"] for result in results] == \
        [[" ".join(reversed(item["prompt"].split()))] for item in chunk]
    assert max(size for size in decoder.calls if size <= 5) <= 5 and decoder.calls[0] == 30


def test_a_single_prompt_that_does_not_fit_fails_the_chunk(setting, vocabulary):
    decoder = StandInDecoder(vocabulary, max_rows=8, fits=0)
    with pytest.raises(ResourceExhaustedError):
        decode_items(columns(items(setting, 2)), decoder, setting)


def test_parameter_sets_are_told_apart_by_type_too(setting, vocabulary):
    """A chunk checks each distinct parameter set once; `true` is not `1` there either."""
    chunk = items(setting, 2)[:2]
    chunk[1]["params"] = {**chunk[0]["params"], "n": True}
    results = decode_items(columns(chunk), StandInDecoder(vocabulary, max_rows=8), setting)[0].results()
    assert "samples" in results[0] and "field 'n'" in results[1]["error"]


def test_a_chunk_in_columns_gives_its_results_in_columns(setting, vocabulary):
    """What a worker reads (ChunkInput: the job's parameters once, a few overrides) gives columns
    (ChunkResult) with each item's samples, unknown words or error in its place."""

    defaults = setting.generation_params().replace(words=3, seed=7).to_dict()
    chunk = ChunkInput(list(range(1, 8)), list(range(1, 8)),
                       ["the door", "holmes moriarty", "   ", "said", "the door", "door", "said the"], defaults,
                       {1: {"n": 2, "temperature": 0.5}, 4: {"words": -1}, 5: "not a mapping"})
    decoder = StandInDecoder(vocabulary, max_rows=2)
    result, words = decode_items(chunk, decoder, setting)
    assert isinstance(result, ChunkResult)
    assert decoder.calls == [2, 1, 1]   # slices of 2 items less the unusable ones (the third: none, no call)
    assert result.samples == ["door the", "<unk> holmes", "<unk> holmes", "said", "the said"]
    assert result.counts == [1, 2, 0, 1, 0, 0, 1] and result.logprobs == [-1.5] * 5
    assert result.unknown == {1: ["moriarty"]}
    assert result.errors[2] == "field 'prompt' must be a non-empty string" and "field 'words'" in result.errors[4]
    assert set(result.errors) == {2, 4, 5} and words == 3 * 5
    assert result.results()[1] == {"unknown": ["moriarty"], "samples": ["<unk> holmes", "<unk> holmes"],
                                   "logprobs": [-1.5, -1.5]}


def test_settle_heap_freezes_what_lives_and_frees_what_was_dropped():
    """settle_heap() moves the live objects out of the collector's way (gc.freeze), and the next
    call collects a frozen object that became garbage since (a model dropped from the cache)."""
    import gc
    import weakref

    from lstmq.worker.runtime import settle_heap

    class Model:
        pass

    model = Model()
    model.self = model                      # a reference cycle, as a Keras model has
    alive = weakref.ref(model)
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        del model
        gc.collect()
        assert alive() is not None          # frozen: full collections leave it alone
        settle_heap()
        assert alive() is None              # unfrozen, collected
    finally:
        gc.unfreeze()


def test_a_chunk_parsed_and_formatted_slice_by_slice_writes_what_the_columns_write(setting, vocabulary):
    """The worker's path (decode_parsed: lines parsed, and output lines formatted, a slice at a
    time in the host thread) writes exactly the lines the column path writes, bad lines and
    per-line parameters included, in order."""
    import json

    from lstmq.shared.output import LineWriter
    from lstmq.shared.store.chunks import LogprobHistogram
    from lstmq.shared.store.records import JobRecord
    from lstmq.worker.jobs.chunks import ParsedChunk, decode_chunk, decode_parsed

    params = setting.generation_params().replace(words=3, seed=7)
    rows = [{"id": f"p{i}", "prompt": ["the door", "holmes moriarty said", "", "door the"][i % 4],
             **({"n": 2, "temperature": 0.5} if i % 5 == 1 else {})} for i in range(23)]
    data = "".join(json.dumps(row) + "\n" for row in rows).encode() + b"{bad\n"
    record = JobRecord.from_hash({b"kind": b"generate", b"id": b"j", b"status": b"queued", b"created": b"0",
                                  b"updated": b"0", b"params": json.dumps(params.to_dict()).encode(),
                                  b"seed_format": b"jsonl", b"seeds_file": b"s.jsonl"})
    parsed = ParsedChunk(record, 1, data, setting, None)
    plan, words = decode_parsed(parsed, StandInDecoder(vocabulary, max_rows=2), setting, LineWriter("m@1"))
    sliced, _report = parsed.output("m@1", plan, 24)
    whole = ParsedChunk.parse(record, 1, data, setting, None)
    columns_plan, columns_words = decode_chunk(whole.input, StandInDecoder(vocabulary, max_rows=2), setting)
    columns, _ = whole.output("m@1", columns_plan, 24)
    assert sliced.out == columns.out and sliced.err == columns.err and words == columns_words
    assert sliced.lines == columns.lines == len(sliced.out.splitlines()) == 17 + 4   # 6 empty prompts fail; 4 others have n=2
    assert sliced.hist == columns.hist and LogprobHistogram   # the same histogram either way
