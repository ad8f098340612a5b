"""Seed files as the producer sees them: bytes. The file (or standard input) is read in large
blocks and cut into chunks of whole lines by byte offsets; a chunk knows its first line number
and goes to Redis as it is, and the worker that takes it parses its lines (shared.seeds). The
producer looks at no line on its own: it finds line ends with numpy, a few nanoseconds a byte.
The one exception is a line too long to be a seed line (over max_line_bytes), which is cut out
here so that memory stays flat whatever the file holds; it is reported like any bad line.

read_seeds parses a whole file in this process, as `lstmq generate --dry-run` does: the slow
path, with every rule of shared.seeds, ids included."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from lstmq.shared.errors import InputError
from lstmq.shared.params import GenerationParams, Limits
from lstmq.shared.seeds import (BYTE_ORDER_MARK, FORMATS, LocalIds, ParamsChecker, Seed, SeedError,
                                parse_chunk)

__all__ = ["Seed", "SeedError", "RawChunk", "check_path", "seed_format", "display_name", "read_chunks",
           "read_seeds", "STDIN", "SUFFIXES"]

SUFFIXES = (".txt", ".jsonl")
STDIN = "-"                  # read the seeds from standard input
BLOCK_BYTES = 4 << 20        # a seed file is read in blocks this large
NEWLINE = 10


class RawChunk(NamedTuple):
    """Whole seed lines as the file holds them: `lines` lines from `first_line` on, each ending in
    a newline (the file's last line may not). `long_lines`: (line, bytes) of the lines over
    max_line_bytes, left in `data` as empty lines."""
    first_line: int
    lines: int
    data: bytes
    long_lines: tuple[tuple[int, int], ...] = ()


def seed_format(path: str | Path, fmt: str | None = None) -> str:
    """txt or jsonl: `fmt` when given, else the file's suffix (standard input: txt)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise InputError(f"seed format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        return fmt
    return "txt" if str(path) == STDIN else Path(path).suffix.lower().lstrip(".")


def check_path(path: str | Path, fmt: str | None = None) -> str | Path:
    """The seed file (or STDIN), checked: it exists, and its format is known."""
    if str(path) == STDIN:
        seed_format(path, fmt)
        return STDIN
    path = Path(path)
    if fmt is None and path.suffix.lower() not in SUFFIXES:
        raise InputError(f"{path}: seed files must end in .txt (one prompt per line) or .jsonl "
                         f"(one JSON object per line), got {path.suffix or 'no suffix'!r} (or say --format)")
    seed_format(path, fmt)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return path


def display_name(path: str | Path) -> str:
    return "<stdin>" if str(path) == STDIN else str(path)


def open_seeds(path: str | Path):
    """A binary stream of the seed file, or of standard input for STDIN (a context manager)."""
    return nullcontext(sys.stdin.buffer) if str(path) == STDIN else Path(path).open("rb", buffering=0)


def read_chunks(stream: BinaryIO, lines_per_chunk: int, max_line_bytes: int, block_bytes: int = BLOCK_BYTES,
                flush_after: float | None = None, clock: Callable[[], float] = time.monotonic) -> Iterator[RawChunk]:
    """The stream's lines in chunks of `lines_per_chunk` (the last one may hold fewer), a UTF-8
    byte order mark at its start dropped. With `flush_after` (seconds), whole lines that waited
    that long for their chunk to fill go out as a smaller chunk (a slow standard input)."""
    read = getattr(stream, "read1", stream.read)
    pending = b""                               # bytes not yet in a chunk
    ends = np.empty(0, dtype=np.int64)          # offsets just past each newline in `pending`
    next_line = 1                               # the first line of the next chunk
    long_lines: list[tuple[int, int]] = []      # over-long lines cut out of `pending`
    skipping: tuple[int, int] | None = None     # (line, bytes so far) of an over-long line being dropped
    waiting_since: float | None = None
    first = True
    limit = max_line_bytes + 1                  # a line may end in \r\n

    def cut(count: int) -> RawChunk:
        nonlocal pending, ends, next_line, long_lines
        end = int(ends[count - 1]) if count <= len(ends) else len(pending)
        data = pending[:end]
        lines = count
        starts = np.concatenate(([0], ends[:count - 1])) if count <= len(ends) else np.concatenate(([0], ends))
        line_ends = ends[:count] if count <= len(ends) else np.concatenate((ends, [end + 1]))
        lengths = line_ends - starts - 1
        chunk_long = [entry for entry in long_lines if entry[0] < next_line + lines]
        if (lengths > limit).any():   # rare: lines too long for a seed line, cut out here
            data, more = _cut_long_lines(data, starts, lengths, limit, next_line)
            chunk_long = sorted(chunk_long + more)
        long_lines = [entry for entry in long_lines if entry[0] >= next_line + lines]
        chunk = RawChunk(next_line, lines, data, tuple(chunk_long))
        pending = pending[end:]
        ends = ends[count:] - end if count <= len(ends) else np.empty(0, dtype=np.int64)
        next_line += lines
        return chunk

    while True:
        data = read(block_bytes)
        if not data:
            break
        if first:
            first = False
            while len(data) < len(BYTE_ORDER_MARK) and BYTE_ORDER_MARK.startswith(data):   # a mark read in pieces
                more = read(block_bytes)
                if not more:
                    break
                data += more
            if data.startswith(BYTE_ORDER_MARK):
                data = data[len(BYTE_ORDER_MARK):]
            if not data:
                continue
        if skipping is not None:
            at = data.find(b"\n")
            if at < 0:
                skipping = (skipping[0], skipping[1] + len(data))
                continue
            long_lines.append((skipping[0], skipping[1] + at - (1 if data[at - 1:at] == b"\r" else 0)))
            skipping = None
            data = data[at:]   # the line stays, empty: its newline keeps the numbering
        scanned = len(pending)
        pending += data
        found = np.flatnonzero(np.frombuffer(pending, dtype=np.uint8, offset=scanned) == NEWLINE)
        if len(found):
            ends = np.concatenate((ends, found + (scanned + 1)))
        tail = len(pending) - (int(ends[-1]) if len(ends) else 0)
        if tail > limit:   # the line being read is already too long: drop it as it comes
            skipping = (next_line + len(ends), tail)
            pending = pending[:len(pending) - tail]
        while len(ends) >= lines_per_chunk:
            yield cut(lines_per_chunk)
            waiting_since = None
        if len(ends):
            if waiting_since is None:
                waiting_since = clock()
            elif flush_after is not None and clock() - waiting_since >= flush_after:
                yield cut(len(ends))
                waiting_since = None
    if skipping is not None:
        long_lines.append(skipping)
        pending += b"\n"
        ends = np.concatenate((ends, [len(pending)]))
    while len(ends) >= lines_per_chunk:
        yield cut(lines_per_chunk)
    if len(pending):
        yield cut(len(ends) + (1 if len(pending) > (int(ends[-1]) if len(ends) else 0) else 0))


def _cut_long_lines(data: bytes, starts, lengths, limit: int, first_line: int) -> tuple[bytes, list[tuple[int, int]]]:
    """`data` with each line over `limit` bytes left empty, and (line, bytes) of each."""
    pieces, cut_out, at = [], [], 0
    for index in np.flatnonzero(lengths > limit):
        start, length = int(starts[index]), int(lengths[index])
        pieces.append(data[at:start])
        if data[start + length - 1:start + length] == b"\r":
            length -= 1
        cut_out.append((first_line + int(index), length))
        at = start + int(lengths[index])   # the newline stays
    pieces.append(data[at:])
    return b"".join(pieces), cut_out


def long_line_error(name: str, line: int, size: int, max_line_bytes: int) -> SeedError:
    return SeedError(name, line, line, f"line is {size} bytes, over max_line_bytes ({max_line_bytes})")


def read_seeds(path: str | Path, defaults: GenerationParams, limits: Limits, fmt: str | None = None,
               lines_per_chunk: int = 4096) -> Iterator[Seed | SeedError]:
    """Yield a Seed or a SeedError for every non-blank line, in file order, checked here with
    every rule a worker applies, duplicate ids included: the dry run's slow path. `path` STDIN
    ("-") reads standard input (txt unless `fmt` says jsonl). Memory does not grow with the file
    but for the ids a .jsonl file sets itself (kept to find duplicates)."""
    path = check_path(path, fmt)
    fmt = seed_format(path, fmt)
    name = display_name(path)
    params_for = ParamsChecker(defaults, limits)
    ids = LocalIds() if fmt == "jsonl" else None
    with open_seeds(path) as stream:
        for chunk in read_chunks(stream, lines_per_chunk, limits.max_line_bytes):
            long_lines = iter(chunk.long_lines)
            cut_out = next(long_lines, None)
            for entry in parse_chunk(chunk.data, chunk.first_line, fmt, name, params_for, limits, ids):
                while cut_out is not None and cut_out[0] < entry.line:
                    yield long_line_error(name, *cut_out, limits.max_line_bytes)
                    cut_out = next(long_lines, None)
                yield entry
            while cut_out is not None:
                yield long_line_error(name, *cut_out, limits.max_line_bytes)
                cut_out = next(long_lines, None)
