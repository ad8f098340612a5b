"""Tokenization and training sequences: one definition for training and generation.

Seed-compatible: the same rules as the seed notebook's Keras `Tokenizer()` (lower case, the
characters in FILTERS replaced by spaces, split on spaces, apostrophes kept), and the same word
order (by count, ties by first appearance), so word ids match the seed's shifted by one: id 0 is
padding and id 1 is <unk>, the out-of-vocabulary word. Unknown words are never dropped: they map
to UNK_ID and are reported. Pure Python and numpy; no TensorFlow.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:   # numpy is imported where a matrix is made: the producer never needs it
    import numpy as np

# Keras Tokenizer's default `filters` (note: no apostrophe).
FILTERS = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~\t\n'
PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
SPECIAL_TOKENS = (PAD, UNK)
# FILTERS as bytes: every filter is ASCII, and UTF-8 never uses an ASCII byte inside a multi-byte
# character, so replacing them in the encoded text is replacing them in the text (bytes.translate
# is a table lookup per byte; str.translate with a dict costs about 1 us per 60-character prompt).
_SEPARATOR_BYTES = bytes.maketrans(FILTERS.encode("ascii"), b" " * len(FILTERS))


def _separated(text: str) -> str:
    """`text` with every character of FILTERS replaced by a space (lone surrogates kept as they are)."""
    return text.encode("utf-8", "surrogatepass").translate(_SEPARATOR_BYTES).decode("utf-8", "surrogatepass")


def words(text: str) -> list[str]:
    """Split text into words exactly as Keras' text_to_word_sequence does with its defaults."""
    return [word for word in _separated(text.lower()).split(" ") if word]


def has_words(text: str) -> bool:
    """Whether words(text) is not empty, without building the list."""
    return bool(_separated(text).strip(" "))


class Vocabulary:
    """Index = token id. 0 is padding, 1 is <unk>, then corpus words by frequency."""

    def __init__(self, tokens: Sequence[str]):
        if list(tokens[:2]) != list(SPECIAL_TOKENS):
            raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}, got {list(tokens[:2])}")
        self.tokens = list(tokens)
        self.ids = {token: index for index, token in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def from_text(cls, text: str, max_words: int = 0) -> Vocabulary:
        """Words by descending count, ties in order of first appearance (the Keras Tokenizer
        order). max_words > 0 keeps only that many words."""
        counts = Counter(words(text))
        ordered = sorted(counts, key=counts.__getitem__, reverse=True)  # stable: ties keep first-seen order
        if max_words > 0:
            ordered = ordered[:max_words]
        return cls([*SPECIAL_TOKENS, *ordered])

    def encode(self, text: str) -> tuple[list[int], list[str]]:
        """Token ids of `text` and the words that were not in the vocabulary (mapped to <unk>)."""
        tokens = words(text)
        get = self.ids.get
        ids = [get(word, UNK_ID) for word in tokens]
        if UNK_ID not in ids and PAD_ID not in ids:   # (no word of words() can be a special token)
            return ids, []
        unknown = [word for word, token_id in zip(tokens, ids) if token_id < len(SPECIAL_TOKENS)]
        return [UNK_ID if token_id < len(SPECIAL_TOKENS) else token_id for token_id in ids], unknown

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[int(token_id)] for token_id in ids]


def training_sequences(text: str, vocabulary: Vocabulary, window: int) -> list[list[int]]:
    """Token sequences for next-word training, one or more per corpus line.

    The seed trains on every prefix of every line (up to `window` tokens of context) predicting the
    next word. A sequence model fed a line's tokens predicts every next word of that line at once,
    from exactly those prefixes, so each line becomes one sequence of up to window + 1 tokens;
    longer lines are cut into pieces of window + 1 tokens that overlap by one, so every word but a
    line's first is a target exactly once. Lines with fewer than two tokens teach nothing."""
    sequences = []
    for line in text.split("\n"):
        ids, _ = vocabulary.encode(line)
        for start in range(0, max(len(ids) - 1, 0), window):
            piece = ids[start:start + window + 1]
            if len(piece) >= 2:
                sequences.append(piece)
    return sequences


def pad_right(sequences: Sequence[Sequence[int]], length: int | None = None) -> np.ndarray:
    """int32 matrix, each row a sequence followed by PAD_ID (the model masks padding)."""
    import numpy as np

    length = max((len(sequence) for sequence in sequences), default=0) if length is None else length
    matrix = np.full((len(sequences), length), PAD_ID, dtype=np.int32)
    for row, sequence in enumerate(sequences):
        matrix[row, :len(sequence)] = sequence[:length]
    return matrix
