"""Object-word extraction: the nouns of a caption that name objects.

Extractors are pluggable by name (`config.input.object_extractor`): each maps
a scalar caption string tensor to int32 ids into `Lexicon.words`, in order of
first occurrence, deduplicated. The default, "lexicon", looks whole words up in
the shipped noun list (plural forms map to their singular).
"""
import os
from typing import Callable

import tensorflow as tf

DEFAULT_LEXICON = os.path.join(os.path.dirname(__file__), "lexicon", "objects.txt")


class Lexicon:
    """Canonical object words and the surface forms that map to each."""

    def __init__(self, path: str = DEFAULT_LEXICON):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"lexicon file {path} does not exist")
        self.path = path
        self.words: list[str] = []
        self.forms: dict[str, int] = {}
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                word, _, rest = line.partition(":")
                word = word.strip().lower()
                if not word or word in self.forms:
                    raise ValueError(f"{path}:{line_no}: empty or repeated word {word!r}")
                self.forms[word] = len(self.words)
                for form in rest.split(","):
                    form = form.strip().lower()
                    if form:
                        self.forms.setdefault(form, len(self.words))
                self.words.append(word)
        self._table = None

    def table(self) -> tf.lookup.StaticHashTable:
        if self._table is None:
            with tf.init_scope():  # eager, so datasets built later can all capture it
                keys = tf.constant(list(self.forms))
                values = tf.constant(list(self.forms.values()), tf.int32)
                self._table = tf.lookup.StaticHashTable(
                    tf.lookup.KeyValueTensorInitializer(keys, values), default_value=-1)
        return self._table


def split_words(caption):
    """Lower-cased alphabetic words of a scalar string tensor."""
    text = tf.strings.regex_replace(tf.strings.lower(caption), "[^a-z]+", " ")
    return tf.strings.split(text)


def lexicon_extractor(lexicon: Lexicon) -> Callable:
    table = lexicon.table()

    def extract(caption):
        ids = table.lookup(split_words(caption))
        ids = tf.boolean_mask(ids, ids >= 0)
        return tf.unique(ids).y  # keeps first-occurrence order

    return extract


EXTRACTORS = {"lexicon": lexicon_extractor}


def get_extractor(name: str, lexicon: Lexicon) -> Callable:
    if name not in EXTRACTORS:
        raise ValueError(f"config.input.object_extractor: unknown extractor {name!r}; "
                         f"known: {sorted(EXTRACTORS)}")
    return EXTRACTORS[name](lexicon)
