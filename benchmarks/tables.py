"""Plain-text tables for the benchmarks' reports, and the seed's network (imported by the scripts beside it)."""
from __future__ import annotations


def print_table(rows: list[list[str]]) -> None:
    """Right-aligned columns; the first row is the header, underlined."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    print()
    for number, row in enumerate(rows):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
        if number == 0:
            print("  ".join("-" * width for width in widths))


def seed_model(total_words: int, context: int = 17, embedding_dim: int = 100, lstm_units: int = 150):
    """The seed notebook's network as it built it: Sequential Embedding -> LSTM -> Dense(softmax)
    over `context` pre-padded tokens, categorical cross-entropy, Adam (train_memory, train_speed)."""
    import keras

    model = keras.Sequential([
        keras.Input(shape=(context,)),
        keras.layers.Embedding(total_words, embedding_dim),
        keras.layers.LSTM(lstm_units),
        keras.layers.Dense(total_words, activation="softmax"),
    ])
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model
