"""The worker-side chunk pipeline (shared.execute): pipelined slices, parameter checks once per
set, and a batch too big for the device split and retried. Unit tests with a stand-in decoder; the
real decoder and worker run in tests/test_integration.py."""
import pytest

from lstmq.shared.config import load_settings
from lstmq.shared.execute import decode_items
from lstmq.shared.messages import PromptItem
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


def test_slices_are_decoded_in_order_and_every_item_has_its_outcome(setting, vocabulary):
    decoder = StandInDecoder(vocabulary, max_rows=3)
    chunk = items(setting, 10)
    results, words = decode_items(chunk, decoder, setting)
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
    results, _ = decode_items(chunk, decoder, setting)
    assert [result["samples"] for result in results] == \
        [[" ".join(reversed(item["prompt"].split()))] for item in chunk]
    assert max(size for size in decoder.calls if size <= 5) <= 5 and decoder.calls[0] == 30


def test_a_single_prompt_that_does_not_fit_fails_the_chunk(setting, vocabulary):
    decoder = StandInDecoder(vocabulary, max_rows=8, fits=0)
    with pytest.raises(ResourceExhaustedError):
        decode_items(items(setting, 2), decoder, setting)


def test_parameter_sets_are_told_apart_by_type_too(setting, vocabulary):
    """A chunk checks each distinct parameter set once; `true` is not `1` there either."""
    chunk = items(setting, 2)[:2]
    chunk[1]["params"] = {**chunk[0]["params"], "n": True}
    results, _ = decode_items(chunk, StandInDecoder(vocabulary, max_rows=8), setting)
    assert "samples" in results[0] and "field 'n'" in results[1]["error"]
