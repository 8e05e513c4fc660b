"""Fluency proxies that need no judge, for samples and for held-out text of the same length beside them.

Text: the share of words the training split has, repetition (distinct-n: distinct word n-grams over all of
them), and sentence length. Music (pitch sequences): the distance of the pitch-class and interval histograms
from the held-out text's, and the share of notes inside the key music21 finds for each piece.
"""
import re

import numpy as np


WORD = re.compile(r"\w+(?:'\w+)?")
SENTENCE_END = re.compile(r'[.!?\n]+')  # a sentence ends at . ! ? or a line break


def words(text):
    return [w.lower() for w in WORD.findall(text)]


def corpus_words(texts):
    """The set of (lowercased) words of an iterable of texts."""
    vocabulary = set()
    for text in texts:
        vocabulary.update(words(text))
    return vocabulary


def distinct(tokens, n):
    """Distinct n-grams of tokens over all n-grams of them (None where there is none)."""
    grams = list(zip(*(tokens[i:] for i in range(n))))
    return len(set(grams)) / len(grams) if grams else None


def text_fluency(texts, vocabulary=None):
    """{'in_vocabulary': share of the texts' words in vocabulary (if given), 'distinct_1' .. 'distinct_3',
    'sentence_words': mean words per sentence}; distinct-n over each text, averaged."""
    all_words = [words(t) for t in texts]
    result = {}
    if vocabulary is not None:
        flat = [w for ws in all_words for w in ws]
        result['in_vocabulary'] = sum(w in vocabulary for w in flat) / len(flat) if flat else None
    for n in (1, 2, 3):
        values = [d for ws in all_words if (d := distinct(ws, n)) is not None]
        result[f'distinct_{n}'] = float(np.mean(values)) if values else None
    lengths = [len(words(s)) for t in texts for s in SENTENCE_END.split(t) if words(s)]
    result['sentence_words'] = float(np.mean(lengths)) if lengths else None
    return result


def histogram(values, bins):
    counts = np.bincount(np.asarray(values, dtype=np.int64), minlength=bins)[:bins].astype(float)
    return counts / counts.sum() if counts.sum() else counts


def pitch_classes(pieces):
    """(12,) share of notes in each pitch class, over pieces (pitch arrays)."""
    return histogram(np.concatenate([np.asarray(p) % 12 for p in pieces]), 12)


def intervals(pieces):
    """(25,) share of melodic intervals -12 .. 12 semitones (clipped) between successive notes."""
    steps = np.concatenate([np.clip(np.diff(np.asarray(p)), -12, 12) + 12 for p in pieces if len(p) > 1] or [[]])
    return histogram(steps, 25)


def jensen_shannon(p, q):
    """The Jensen-Shannon distance (base 2: 0 equal, 1 disjoint) between two histograms."""
    m = (p + q) / 2

    def kl(a):
        nonzero = a > 0
        return float(np.sum(a[nonzero] * np.log2(a[nonzero] / m[nonzero])))
    return float(np.sqrt(max(0.0, (kl(p) + kl(q)) / 2)))


def in_key(pitches):
    """The share of a piece's notes (pitches) in the key music21 finds for it (Krumhansl-Schmuckler)."""
    import music21
    if len(pitches) == 0:
        return None
    stream = music21.stream.Stream([music21.note.Note(int(p)) for p in pitches])
    scale = {p.pitchClass for p in stream.analyze('key').getScale().getPitches()}
    return float(np.mean([int(p) % 12 in scale for p in pitches]))


def share_in_key(pieces):
    """The mean over pieces (pitch arrays) of the share of their notes in their key (None: no notes at all)."""
    keyed = [k for p in pieces if (k := in_key(p)) is not None]
    return float(np.mean(keyed)) if keyed else None


def music_fluency(pieces, reference):
    """{'pitch_class_distance', 'interval_distance': Jensen-Shannon distances of pieces' histograms from
    reference's, 'in_key': share_in_key(pieces)}."""
    return {'pitch_class_distance': jensen_shannon(pitch_classes(pieces), pitch_classes(reference)),
            'interval_distance': jensen_shannon(intervals(pieces), intervals(reference)),
            'in_key': share_in_key(pieces)}
