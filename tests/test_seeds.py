import json

import pytest

from lstmq.producer.collect import errors_path
from lstmq.producer.seeds import Seed, SeedError, check_path, read_seeds
from lstmq.shared.errors import InputError
from lstmq.shared.params import GenerationParams, Limits, prompt_key

DEFAULTS = GenerationParams(words=7, temperature=0.0, top_k=0, top_p=1.0, n=1, seed=5)
LIMITS = Limits(max_words=100, max_n=10, max_prompt_chars=200, max_line_bytes=1000)


def read(path):
    return list(read_seeds(path, DEFAULTS, LIMITS))


def test_txt_ids_are_line_numbers_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "seeds.txt"
    path.write_bytes(b"first prompt\n\n   \nsecond prompt\r\n...\nthird\n")
    entries = read(path)
    assert [(type(e).__name__, e.line) for e in entries] == [("Seed", 1), ("Seed", 4), ("SeedError", 5), ("Seed", 6)]
    assert entries[1].prompt == "second prompt" and entries[1].id == 4
    assert entries[2].record() == {"id": 5, "line": 5, "error": "prompt has no words (only spaces or punctuation)"}
    assert str(entries[2]) == f"{path}:5: prompt has no words (only spaces or punctuation)"


def test_txt_bad_bytes_and_long_lines(tmp_path):
    path = tmp_path / "seeds.txt"
    path.write_bytes(b"good one\nbad \xff byte\n" + b"x" * 1001 + b"\n" + b"y " * 150 + b"\n")
    entries = read(path)
    assert isinstance(entries[0], Seed)
    assert entries[1].error == "not valid UTF-8 (byte 0xff at column 5)"
    assert "over max_line_bytes (1000)" in entries[2].error
    assert "over max_prompt_chars (200)" in entries[3].error


def test_jsonl_fields_and_overrides(tmp_path):
    path = tmp_path / "seeds.jsonl"
    lines = [
        {"id": "a", "prompt": "hello there", "words": 3, "temperature": 0.7, "top_k": 5, "top_p": 0.9, "n": 2, "seed": 9},
        {"prompt": "no id given"},
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    first, second = read(path)
    assert first.id == "a" and first.params.to_dict() == {"words": 3, "temperature": 0.7, "top_k": 5, "top_p": 0.9, "n": 2,
                                                         "seed": 9}
    assert second.id == 2 and second.params == DEFAULTS


@pytest.mark.parametrize("line, message", [
    ('{"id": 1, "prompt": "x y", ', "not valid JSON"),
    ('["a", "b"]', "expected a JSON object"),
    ('{"id": 1}', "missing field 'prompt'"),
    ('{"id": 1, "prompt": 42}', "field 'prompt' must be a string"),
    ('{"id": [1], "prompt": "x"}', "field 'id' must be a string or an integer"),
    ('{"id": 1, "prompt": "x", "colour": "red"}', "unknown field 'colour'"),
    ('{"id": 1, "prompt": "x", "words": 0}', "field 'words' must be >= 1"),
    ('{"id": 1, "prompt": "x", "words": 101}', "field 'words' must be <= max_words (100)"),
    ('{"id": 1, "prompt": "x", "temperature": "hot"}', "field 'temperature' must be a number"),
    ('{"id": 1, "prompt": "x", "top_p": 0}', "field 'top_p' must be > 0"),
    ('{"id": 1, "prompt": "x", "n": true}', "field 'n' must be an integer"),
    ('{"id": 1, "prompt": "x", "seed": -1}', "field 'seed' must be >= 0"),
    ('{"id": 1, "prompt": "x", "seed": null}', "field 'seed' must be an integer >= 0, got null"),
])
def test_jsonl_bad_lines(tmp_path, line, message):
    path = tmp_path / "seeds.jsonl"
    path.write_text(f'{{"id": "ok", "prompt": "fine words"}}\n{line}\n')
    good, bad = read(path)
    assert isinstance(good, Seed) and isinstance(bad, SeedError)
    assert bad.line == 2 and message in bad.error


def test_duplicate_ids_keep_the_first(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"id": 7, "prompt": "one"}\n{"id": 7, "prompt": "two"}\n')
    first, second = read(path)
    assert isinstance(first, Seed)
    assert second.error == "duplicate id 7 (first used on line 1)" and second.id == 7


def test_file_type_and_presence(tmp_path):
    with pytest.raises(InputError, match="must end in .txt"):
        check_path(tmp_path / "seeds.csv")
    with pytest.raises(InputError, match="no such file"):
        check_path(tmp_path / "missing.txt")


def test_errors_path():
    assert errors_path("out/run.jsonl").as_posix() == "out/run.errors.jsonl"
    assert errors_path("run.out").name == "run.out.errors.jsonl"


def test_prompt_keys_are_stable():
    assert prompt_key(12) == 12
    assert prompt_key("a") == prompt_key("a") != prompt_key("b")
    assert 0 <= prompt_key(-3) < 2**63 and prompt_key("12") != 12


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_jsonl_non_finite_numbers_are_per_line_errors(tmp_path, constant):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"id": 1, "prompt": "good before"}\n'
                    f'{{"id": 2, "prompt": "not a number", "temperature": {constant}}}\n'
                    '{"id": 3, "prompt": "good after", "temperature": 0.5}\n')
    before, bad, after = read(path)
    assert isinstance(before, Seed) and isinstance(after, Seed) and after.params.temperature == 0.5
    assert isinstance(bad, SeedError) and bad.line == 2 and bad.id is None
    assert bad.error == f"field 'temperature' must be a finite number, got {constant} at column 52"
    json.dumps(bad.record(), allow_nan=False)   # the errors file stays strict JSON


@pytest.mark.parametrize("line, message", [
    ('{"id": 1, "prompt": "x", "top_p": NaN}', "field 'top_p' must be a finite number, got NaN at column 35"),
    ('{"id": 1, "prompt": "NaN Infinity", "words": Infinity}',
     "field 'words' must be a finite number, got Infinity at column 46"),
    ('{"id": NaN, "prompt": "x"}', "not valid JSON: NaN at column 8 (JSON numbers must be finite)"),
    ('{"id": 1, "prompt": "x \\" NaN", "seed": [-Infinity]}',
     "not valid JSON: -Infinity at column 42 (JSON numbers must be finite)"),
    ('NaN', "not valid JSON: NaN at column 1 (JSON numbers must be finite)"),
    ('{"id": 1, "prompt": "x", "temperature": 1e400}', "field 'temperature' must be a finite number, got inf"),
    ('{"id": 1, "prompt": "x", "temperature": "NaN"}', "field 'temperature' must be a finite number, got 'NaN'"),
    ('{"id": 1, "prompt": "x", "temperature": 1' + "0" * 400 + '}',
     "field 'temperature' must be a finite number, got an integer too large for a float"),
    ('{"id": 1, "prompt": "x", "words": 1' + "0" * 5000 + '}', "not valid JSON: Exceeds the limit"),
    ('{"id": ' + "[" * 100_000, "not valid JSON: arrays or objects nested too deeply"),
])
def test_jsonl_non_finite_and_extreme_values(tmp_path, line, message):
    path = tmp_path / "seeds.jsonl"
    path.write_text(f'{{"id": "ok", "prompt": "fine words"}}\n{line}\n')
    good, bad = read_seeds(path, DEFAULTS, LIMITS.replace(max_line_bytes=1_000_000))
    assert isinstance(good, Seed) and isinstance(bad, SeedError)
    assert bad.line == 2 and bad.error.startswith(message)


def test_txt_byte_order_mark_is_stripped_from_the_first_line_only(tmp_path):
    path = tmp_path / "seeds.txt"
    path.write_bytes(b"\xef\xbb\xbfFirst prompt here\nsecond \xef\xbb\xbfprompt\n")
    first, second = read(path)
    assert isinstance(first, Seed) and first.prompt == "First prompt here" and first.id == 1
    assert second.prompt == "second \ufeffprompt"   # a BOM inside the file is text, not a marker


def test_txt_byte_order_mark_alone_on_the_first_line_is_a_blank_line(tmp_path):
    path = tmp_path / "seeds.txt"
    path.write_bytes(b"\xef\xbb\xbf\r\nonly prompt\n")
    (only,) = read(path)
    assert only.line == 2 and only.prompt == "only prompt"


def test_jsonl_byte_order_mark_is_stripped(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "hello there"}\r\n{"prompt": "no id"}\n')
    first, second = read(path)
    assert isinstance(first, Seed) and (first.line, first.id, first.prompt) == (1, "a", "hello there")
    assert isinstance(second, Seed) and second.id == 2


def test_jsonl_byte_order_mark_after_line_one_is_still_an_error(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_bytes(b'{"id": "a", "prompt": "hello"}\n\xef\xbb\xbf{"id": "b", "prompt": "there"}\n')
    first, second = read(path)
    assert isinstance(first, Seed) and isinstance(second, SeedError)
    assert second.error.startswith("not valid JSON")


def test_implied_id_clashes_with_an_earlier_explicit_id(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"id": 3, "prompt": "explicit three"}\n{"prompt": "two"}\n{"prompt": "implied three"}\n')
    first, second, third = read(path)
    assert isinstance(first, Seed) and isinstance(second, Seed) and second.id == 2
    assert isinstance(third, SeedError) and third.line == 3 and third.id == 3
    assert third.error == ('duplicate id 3 (line 3 has no "id", so its id is its line number; '
                           'line 1 set "id": 3)')


def test_explicit_id_clashes_with_an_earlier_implied_id(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"prompt": "implied one"}\n{"id": "x", "prompt": "two"}\n{"id": 1, "prompt": "explicit one"}\n')
    first, second, third = read(path)
    assert isinstance(first, Seed) and first.id == 1 and isinstance(second, Seed)
    assert isinstance(third, SeedError) and third.line == 3 and third.id == 1
    assert third.error == ('duplicate id 1 (line 1 has no "id", so its id is its line number; '
                           'line 3 sets "id": 1)')


def test_string_id_does_not_clash_with_an_implied_integer_id(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"id": "2", "prompt": "string two"}\n{"prompt": "implied two"}\n')
    assert [(type(entry).__name__, entry.id) for entry in read(path)] == [("Seed", "2"), ("Seed", 2)]


def test_lines_with_the_job_parameters_share_one_checked_object(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b", "words": 3}\n{"prompt": "c", "words": 3}\n{"prompt": "d"}\n'
                    '{"prompt": "e", "n": true}\n{"prompt": "f", "n": 1}\n{"prompt": "g", "n": 1.0}\n')
    a, b, c, d, e, f, g = read(path)
    assert a.params is d.params and a.params == DEFAULTS
    assert b.params is c.params and b.params.words == 3          # a repeated override is checked once
    assert isinstance(e, SeedError) and "field 'n' must be an integer" in e.error   # true is not 1
    assert isinstance(f, Seed) and f.params.n == 1
    assert isinstance(g, SeedError) and "field 'n' must be an integer" in g.error


def test_job_parameters_that_do_not_pass_fail_every_line(tmp_path):
    path = tmp_path / "seeds.txt"
    path.write_text("one\ntwo\n")
    entries = list(read_seeds(path, DEFAULTS.replace(words=1000), LIMITS))
    assert [entry.error for entry in entries] == ["field 'words' must be <= max_words (100), got 1000"] * 2


def test_a_long_txt_file_streams_with_line_numbers_as_ids(tmp_path):
    path = tmp_path / "seeds.txt"
    with path.open("w") as stream:
        for line in range(1, 50_001):
            stream.write("\n" if line % 1000 == 0 else f"word{line}\n")
    entries = read(path)
    assert len(entries) == 50_000 - 50 and all(type(entry) is Seed for entry in entries)
    assert [entry.id for entry in entries[998:1000]] == [999, 1001] and entries[-1].prompt == "word49999"


def test_chunks_are_whole_lines_numbered_from_one_whatever_the_blocks():
    """read_chunks cuts any byte stream into chunks of whole lines (by newline offsets, never by
    looking at a line), at most N lines each, numbered on; a line over the limit is left empty
    and reported, even when it spans many blocks; a byte order mark at the start goes."""
    import io
    import random

    from lstmq.producer.seeds import read_chunks

    for trial in range(300):
        rnd = random.Random(trial)
        lines = [b"x\r" if rnd.random() < 0.1 else b"y" * rnd.randrange(0, 12) for _ in range(rnd.randrange(0, 40))]
        data = b"\n".join(lines) + (b"\n" if rnd.random() < 0.5 else b"")
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        per_chunk, block = rnd.randrange(1, 6), rnd.randrange(1, 30)
        chunks = list(read_chunks(io.BytesIO(b"\xef\xbb\xbf" + data), per_chunk, 8, block_bytes=block))
        assert [chunk.first_line for chunk in chunks] == [1 + sum(c.lines for c in chunks[:i]) for i in range(len(chunks))]
        assert all(0 < chunk.lines <= per_chunk for chunk in chunks) and sum(c.lines for c in chunks) == len(lines)
        kept = [b"".join(chunk.data for chunk in chunks).split(b"\n")[i] for i in range(len(lines))]
        # over max_line_bytes + 1 (room for a \r): cut out; the worker judges the line of max + 1 itself
        assert kept == [line if len(line) <= 9 else b"" for line in lines], (data, per_chunk, block)
        assert [entry for chunk in chunks for entry in chunk.long_lines] == [
            (number, len(line.rstrip(b"\r"))) for number, line in enumerate(lines, 1) if len(line) > 9]


def test_a_slow_input_sends_what_it_has():
    """Standard input that stops mid-chunk: the whole lines that waited flush_after go as a chunk."""
    from lstmq.producer.seeds import read_chunks

    class Trickle:
        def __init__(self, parts):
            self.parts = list(parts)

        def read(self, _size):
            return self.parts.pop(0) if self.parts else b""

    clock = iter([0.0, 5.0, 5.1, 9.0]).__next__
    chunks = list(read_chunks(Trickle([b"one\ntw", b"o\n", b"three\n"]), 100, 50, flush_after=1.0, clock=clock))
    assert [(chunk.first_line, chunk.data) for chunk in chunks] == [(1, b"one\ntwo\n"), (3, b"three\n")]
