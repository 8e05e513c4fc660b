"""How much of a model's output occurs verbatim in its training split: the share of the samples' n-grams found there.

Text is compared in characters (code points), music in notes (their pitches, in onset order): a tokenizer's ids
become such units here, so a model that copies training text scores the same whatever its tokenizer. No index of
the corpus is built; the samples' n-grams are the index, a sorted array of their 64-bit hashes per n, and the
training split streams past it a chunk of tokens at a time:

    train.bin   | chunk 1  | chunk 2  | chunk 3  | ...       cut at document boundaries, decoded to units
                       |tail| chunk 2  |                     the last max(n) - 1 units carried in front of the next
    the hash of every window of n units of a chunk -> looked up among the samples' hashes; those found are marked

Memory grows with the chunk and the samples, not with the corpus. held_out_passages gives the baseline: text of
the val split, which the model never trained on, whose n-grams occur in the training text only as often as the
language repeats itself.
"""
import time

import numpy as np
from tqdm import tqdm

from configurator import UserError
from slm import storage
from slm import tokenizer as tok


CHUNK_TOKENS = 1 << 18  # tokens decoded at a time; hashing a chunk takes some 50 bytes of scratch per unit
# The hash of a window u_0 ... u_(n-1) is sum u_j * HASH_BASE**j modulo 2**64 (numpy's uint64 wrap-around). The base
# is odd, so it has an inverse modulo 2**64 and every window's hash is cut out of one prefix sum per chunk. Two
# different windows collide with a chance near 2**-64: a scan of 10**10 windows for 10**6 distinct sample n-grams
# expects 10**16 / 1.8 * 10**19, under 0.001, false matches. (Strings made to collide, Thue-Morse's, need windows
# of thousands of units.)
HASH_BASE = 0x9E3779B97F4A7C15
HASH_BASE_INVERSE = pow(HASH_BASE, -1, 1 << 64)
# A window is searched for among the samples' hashes only if a table of their top PREFILTER_BITS bits has its top
# bits: most windows of a corpus miss there, at the cost of one lookup in a table that stays in cache.
PREFILTER_BITS = 20


def text_units(text):
    """The code points of a string: a (len(text),) uint32 array."""
    return np.frombuffer(text.encode('utf-32-le'), dtype='<u4')


def unit_text(units):
    """The string of an array of code points (text_units' inverse)."""
    return np.asarray(units, dtype='<u4').tobytes().decode('utf-32-le')


def note_units(notes):
    """The pitches of notes (music.Note) in onset order, ties by pitch: a (len(notes),) uint32 array."""
    return np.array([n.pitch for n in sorted(notes, key=lambda n: (n.onset, n.pitch))], dtype=np.uint32)


def units_of(tokenizer, ids):
    """What ids say, in the units they are compared in: the code points of their text, or the pitches of their
    notes where tokenizer.unit is 'note'. An end of document reads as the tokenizer decodes it ('\\n' for most)."""
    ids = np.asarray(ids).tolist()  # Python ints: what tiktoken takes, and quicker to walk than an array
    if tokenizer.unit == 'note':
        return note_units(tokenizer.to_notes(ids))
    return text_units(tokenizer.decode(ids))


def window_hashes(units, ns):
    """{n: the hash of every window of n units}, a (len(units) - n + 1,) uint64 array each (empty when units are
    shorter), from one prefix sum for all ns: S[k] = sum over j < k of units[j] * HASH_BASE**j, and window i's
    hash is (S[i + n] - S[i]) * HASH_BASE**-i."""
    length = len(units)
    powers = np.full(length, HASH_BASE, dtype=np.uint64)
    powers[:1] = 1
    np.cumprod(powers, out=powers)  # HASH_BASE**j
    prefix = np.zeros(length + 1, dtype=np.uint64)
    np.cumsum(np.multiply(np.asarray(units).astype(np.uint64), powers, out=powers), out=prefix[1:])
    del powers
    inverse_powers = np.full(max(0, length - min(ns) + 1), HASH_BASE_INVERSE, dtype=np.uint64)
    inverse_powers[:1] = 1
    np.cumprod(inverse_powers, out=inverse_powers)  # HASH_BASE**-i
    hashes = {}
    for n in ns:
        windows = max(0, length - n + 1)
        hashes[n] = np.subtract(prefix[n:n + windows], prefix[:windows]) * inverse_powers[:windows]
    return hashes


def ngram_hashes(units, n):
    """The hash of every window of n units: a (len(units) - n + 1,) uint64 array, empty when units are shorter.
    Equal windows hash alike wherever they are."""
    return window_hashes(units, [n])[n]


def token_chunks(data_dir, split, meta=None, chunk_tokens=CHUNK_TOKENS):
    """The token ids of a split, at most chunk_tokens at a time, each chunk ending at the last document boundary in
    it (a document longer than a chunk is cut), with a progress bar counting tokens."""
    meta = meta or storage.load_meta(data_dir)
    tokens, offsets = storage.open_split(data_dir, split, meta)
    start = 0
    with tqdm(total=len(tokens), desc=f'scan {split}', unit='tok', unit_scale=True, mininterval=1) as progress:
        while start < len(tokens):
            end = min(start + chunk_tokens, len(tokens))
            boundary = offsets[np.searchsorted(offsets, end, side='right') - 1]
            end = int(boundary) if boundary > start else end
            yield tokens[start:end]
            progress.update(end - start)
            start = end


def corpus_chunks(data_dir, split, meta=None, tokenizer=None, chunk_tokens=CHUNK_TOKENS):
    """The units of a split (units_of), an array per chunk of token_chunks; they join to the units of the whole
    split. A chunk cut inside a document may lose the character or the note sounding at the cut."""
    meta = meta or storage.load_meta(data_dir)
    tokenizer = tokenizer or tok.from_meta(meta['tokenizer'])
    for ids in token_chunks(data_dir, split, meta, chunk_tokens):
        yield units_of(tokenizer, ids)


def shares_in_corpus(query_sets, chunks, ns, stats=None):
    """For each set of queries, the share of all its n-grams (every position of every query) that occur verbatim
    somewhere in the chunks, at each n; all sets and all ns in one pass over the chunks.

    query_sets: lists of unit arrays (say the samples, and held-out passages); a query shorter than n has no
    n-gram. chunks: unit arrays that join to the corpus (corpus_chunks); n-grams across their cuts count too.
    Returns [{n: share, or None where the set has no n-gram}] in the order of query_sets. stats, if given, gets
    'units_scanned' and 'scan_seconds' (the pass's time, decoding the chunks included).
    """
    ns = sorted(set(ns))
    shift = np.uint64(64 - PREFILTER_BITS)
    index = {}  # n -> (sorted distinct hashes of every set's n-grams, which are found, each set's n-grams' places)
    for n in ns:
        per_set = [np.concatenate([np.empty(0, np.uint64), *(ngram_hashes(q, n) for q in queries)])
                   for queries in query_sets]
        distinct, places = np.unique(np.concatenate([np.empty(0, np.uint64), *per_set]), return_inverse=True)
        cuts = np.cumsum([len(h) for h in per_set])[:-1]
        index[n] = distinct, np.zeros(len(distinct), dtype=bool), np.split(places, cuts)
    prefilter = {n: np.zeros(1 << PREFILTER_BITS, dtype=bool) for n in ns}
    for n in ns:
        prefilter[n][index[n][0] >> shift] = True
    carried = ns[-1] - 1
    tail = np.empty(0, dtype=np.uint32)
    scanned, began = 0, time.perf_counter()
    for chunk in chunks:
        scanned += len(chunk)
        window = np.concatenate([tail, chunk])
        tail = window[max(0, len(window) - carried):] if carried else window[:0]  # [-0:] would keep it all
        for n, hashes in window_hashes(window, ns).items():
            distinct, found, _ = index[n]
            if len(distinct):
                candidates = hashes[prefilter[n][hashes >> shift]]
                i = np.minimum(np.searchsorted(distinct, candidates), len(distinct) - 1)
                found[i[distinct[i] == candidates]] = True
    if stats is not None:
        stats.update(units_scanned=scanned, scan_seconds=time.perf_counter() - began)
    shares = [{} for _ in query_sets]
    for n, (_, found, places) in index.items():
        for share, set_places in zip(shares, places):
            share[n] = float(found[set_places].mean()) if len(set_places) else None
    return shares


def held_out_passages(data_dir, meta, tokenizer, count, length, seed):
    """count passages of length units each from the val split: its units (corpus_chunks, held in memory) from starts
    drawn by numpy's default_rng(seed), so a passage may run on from one document into the next."""
    units = np.concatenate([np.empty(0, np.uint32), *corpus_chunks(data_dir, 'val', meta, tokenizer)])
    if len(units) < length:
        unit = (tokenizer or tok.from_meta((meta or storage.load_meta(data_dir))['tokenizer'])).unit
        raise UserError(f"the val split of {data_dir} has {len(units):,} {unit}s, fewer than the {length:,} of a"
                        f" held-out passage: ask for shorter passages")
    starts = np.random.default_rng(seed).integers(0, len(units) - length + 1, size=count)
    return [units[start:start + length] for start in starts]
