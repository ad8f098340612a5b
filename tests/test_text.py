import pytest

from lstmq.shared.text import FILTERS, PAD_ID, UNK_ID, Vocabulary, has_words, pad_right, training_sequences, words


def test_words_follow_keras_tokenizer_rules():
    # lower case, FILTERS become spaces, apostrophes kept, split on spaces
    assert words("I'll close the DOOR, if--you please!") == ["i'll", "close", "the", "door", "if", "you", "please"]
    assert words("  tabs\tand\nnewlines  ") == ["tabs", "and", "newlines"]
    assert words("...!?") == []


def test_words_are_keras_words_for_any_text(corpus_text):
    """words() replaces the filters in the UTF-8 bytes: the same words as replacing them in the
    text (Keras' way), for every corpus line and for text that is not ASCII, with lone
    surrogates, or with whitespace other than spaces (not a separator for Keras)."""
    table = str.maketrans({character: " " for character in FILTERS})

    def keras(text):
        return [word for word in text.lower().translate(table).split(" ") if word]

    odd = ["Ünïcödé — “quotes” café\tdéjà-vu\n¡hola!", "a\u00a0b\u2003c\rd", "ǅ İstanbul STRASSE ß",
           "x\ud800y", "\ud83d\ude00 emoji 😀, fine.", "", "  ", "...!!!", "it's o'clock", "\x00\x7f\x80"]
    for text in [*corpus_text.split("\n"), *odd]:
        assert words(text) == keras(text), text
        assert has_words(text) == bool(keras(text)), text
    vocabulary = Vocabulary(["<pad>", "<unk>", "the", "café", "<pad>x"])
    assert vocabulary.encode("The café, <pad> <unk> THE") == ([2, 3, 1, 1, 2], ["pad", "unk"])
    assert vocabulary.encode("the the") == ([2, 2], [])


def test_vocabulary_order_is_count_then_first_appearance():
    vocabulary = Vocabulary.from_text("b a c a b a d")
    assert vocabulary.tokens == ["<pad>", "<unk>", "a", "b", "c", "d"]
    assert Vocabulary.from_text("b a c a b a d", max_words=2).tokens == ["<pad>", "<unk>", "a", "b"]


def test_unknown_words_are_kept_and_reported():
    vocabulary = Vocabulary.from_text("the cat sat")
    ids, unknown = vocabulary.encode("The dog sat")
    assert ids == [vocabulary.ids["the"], UNK_ID, vocabulary.ids["sat"]]
    assert unknown == ["dog"]
    # '<' and '>' are filtered, so a prompt cannot name a special token
    assert vocabulary.encode("<pad>") == ([UNK_ID], ["pad"])


def test_seed_corpus_vocabulary_matches_the_seed(corpus_text):
    vocabulary = Vocabulary.from_text(corpus_text)
    # the seed's Tokenizer: 8,200 = 8,199 words + padding; lstmq adds <unk>
    assert len(vocabulary) == 8201
    assert vocabulary.tokens[2:12] == ["the", "and", "i", "to", "of", "a", "in", "that", "it", "he"]
    assert vocabulary.ids["holmes"] == 34 + 1 and vocabulary.ids["'"] == 38 + 1


def test_training_sequences_cover_every_seed_example(corpus_text):
    vocabulary = Vocabulary.from_text(corpus_text)
    sequences = training_sequences(corpus_text, vocabulary, window=17)
    # the seed builds one example per word after a line's first: 96,314 on this corpus
    seed_examples = sum(max(len(words(line)) - 1, 0) for line in corpus_text.split("\n"))
    assert sum(len(sequence) - 1 for sequence in sequences) == seed_examples
    assert max(len(sequence) for sequence in sequences) <= 18


def test_long_lines_are_cut_into_overlapping_windows():
    vocabulary = Vocabulary.from_text(" ".join(f"w{i}" for i in range(10)))
    sequences = training_sequences(" ".join(f"w{i}" for i in range(10)), vocabulary, window=4)
    assert [len(sequence) for sequence in sequences] == [5, 5, 2]
    assert sequences[0][-1] == sequences[1][0] and sequences[1][-1] == sequences[2][0]
    assert sum(len(sequence) - 1 for sequence in sequences) == 9


def test_pad_right():
    matrix = pad_right([[3, 4, 5], [6]])
    assert matrix.tolist() == [[3, 4, 5], [6, PAD_ID, PAD_ID]]


def test_vocabulary_must_start_with_special_tokens():
    with pytest.raises(ValueError):
        Vocabulary(["the", "a"])
