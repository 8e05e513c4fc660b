"""Tokenizers: text <-> token ids. The model never sees text, only the ids made here.

Five kinds share one interface (build, encode, encode_lines, decode, to_meta, vocab_size and the special ids
unk_id, bos_id, eos_id, pad_id). The character, word and learned BPE tokenizers learn their vocabulary from the
corpus and put their special tokens at fixed indices, as the midi tokenizer does:

    0 <?>  unknown      1 <s>  start of a document      2 </s>  end of a document      3 <>  padding

The bpe tokenizer is GPT-2's byte-level BPE through tiktoken: a fixed vocabulary of 50,257 ids whose last,
50256 <|endoftext|>, ends every document. Bytes cannot be unknown and nothing is padded, so unk_id and
pad_id are None; bos_id is the end-of-text id too, so a prompt starts the way every document after the
first does in training: right after the previous document's <|endoftext|>.

The learned_bpe tokenizer is a byte-level BPE like GPT-2's, with its vocabulary learned from the training
split instead (rustbpe learns the merges, tiktoken encodes with them): ids 0-3 the specials, 4-259 the 256 bytes,
then the learned tokens. Bytes cannot be unknown, so unk_id is None and id 0 is never produced.

The midi tokenizer encodes music, not text: notes (music.py) as performance events, see MidiTokenizer.

A tokenizer serializes to a plain dict (to_meta) that prepare.py writes into meta.json and train.py into
every checkpoint; from_meta rebuilds it with nothing else at hand.
"""
import codecs
import collections
import itertools
import os
import re

import tiktoken
from tqdm import tqdm

from configurator import UserError
from slm import music


# GPT-2's BPE files, put here by tools/fetch_gpt2_vocab.py: read by default, so the bpe tokenizer works offline
PROJECT_TIKTOKEN_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.tiktoken_cache')
SPECIALS = ('<?>', '<s>', '</s>', '<>')
UNK_ID, BOS_ID, EOS_ID, PAD_ID = range(len(SPECIALS))


class VocabTokenizer:
    """A tokenizer over an explicit vocabulary list: specials first, then the learned tokens."""
    kind = None
    unit = 'char'  # what prepare.py counts in a document besides tokens, and train.py reports bits per
    unk_id, bos_id, eos_id, pad_id = UNK_ID, BOS_ID, EOS_ID, PAD_ID
    # How specials read when decoded: a document ends with a line break, the others vanish.
    special_text = {UNK_ID: '<?>', BOS_ID: '', EOS_ID: '\n', PAD_ID: ''}

    def __init__(self, vocab):
        if tuple(vocab[:len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with the special tokens {SPECIALS}")
        self.vocab = list(vocab)
        self.ids = {token: i for i, token in enumerate(self.vocab)}
        self._text = [self.special_text.get(i, token) for i, token in enumerate(self.vocab)]

    @property
    def vocab_size(self):
        return len(self.vocab)

    def encode(self, text):
        """Token ids of a string, or a list of id lists for a list of strings. No specials are added."""
        if isinstance(text, str):
            return self._encode(text)
        return [self._encode(t) for t in text]

    def encode_lines(self, lines):
        """Each line as <s> ids... </s>: one id list per line."""
        return [[self.bos_id, *self._encode(line), self.eos_id] for line in lines]

    def decode(self, ids):
        """The text of a sequence of ids; </s> reads as a line break, <s> and padding as nothing."""
        return ''.join(self._text[i] for i in ids)

    def stream_decoder(self):
        """A function of one id that returns the text it adds: its returns for ids given one by one join to
        decode(ids), at a constant cost per id (a stream need not decode its whole text again at every token)."""
        return self._text.__getitem__

    def to_meta(self):
        return {'kind': self.kind, 'vocab': self.vocab, 'special_ids': special_ids(self)}

    @classmethod
    def from_meta(cls, meta):
        return cls(meta['vocab'])


class CharTokenizer(VocabTokenizer):
    """One token per character; a character the corpus never had becomes <?>."""
    kind = 'char'

    @classmethod
    def build(cls, texts):
        chars = set()
        for text in texts:
            chars.update(text)
        return cls([*SPECIALS, *sorted(chars)])

    def _encode(self, text):
        ids = self.ids
        return [ids.get(c, UNK_ID) for c in text]


class WordTokenizer(VocabTokenizer):
    """Words, whitespace runs and single punctuation marks, so decode(encode(s)) == s.

    "You're here?" -> ["You're", " ", "here", "?"]. The vocabulary holds every character of the corpus
    too, so a word outside the vocabulary is spelled with character tokens instead of being lost.
    """
    kind = 'word'
    # A word may carry inner apostrophes ("You're", "Jacob's"); a whitespace run is one token.
    pattern = re.compile(r"\w+(?:'\w+)*|\s+|[^\w\s]")

    @classmethod
    def build(cls, texts, max_vocab=0, min_count=1):
        """Vocabulary from the corpus: specials, every character, then pieces by falling frequency.

        max_vocab (0 = no limit) caps the total size; pieces seen fewer than min_count times are spelled.
        """
        counts = collections.Counter()
        chars = set()
        for text in texts:
            counts.update(cls.pattern.findall(text))
            chars.update(text)
        vocab = [*SPECIALS, *sorted(chars)]
        known = set(vocab)
        words = sorted((w for w, n in counts.items() if n >= min_count and w not in known),
                       key=lambda w: (-counts[w], w))
        if max_vocab:
            words = words[:max(0, max_vocab - len(vocab))]
        return cls(vocab + words)

    def _encode(self, text):
        ids = self.ids
        out = []
        for piece in self.pattern.findall(text):
            i = ids.get(piece)
            if i is not None:
                out.append(i)
            else:
                out.extend(ids.get(c, UNK_ID) for c in piece)
        return out


class BPETokenizer:
    """GPT-2's byte-level BPE (tiktoken's `gpt2` encoding): every string encodes, decode(encode(s)) == s.

    Text is encoded with encode_ordinary, so "<|endoftext|>" written in a document is plain text, never the
    special token; encode_lines puts the real one (eot_id, 50256) after every document.
    """
    kind = 'bpe'
    unit = 'char'
    unk_id = pad_id = None

    def __init__(self, encoding='gpt2'):
        try:
            self.encoding = load_tiktoken_encoding(encoding)
        except (OSError, ValueError) as error:  # requests' ConnectionError is an OSError
            raise UserError(f"tiktoken cannot load the {encoding} BPE vocabulary ({type(error).__name__}):"
                            f" go online once, or run `python tools/fetch_gpt2_vocab.py` (it fills"
                            f" {PROJECT_TIKTOKEN_CACHE}, read when TIKTOKEN_CACHE_DIR is not set)")
        self.eot_id = self.bos_id = self.eos_id = self.encoding.eot_token

    @classmethod
    def build(cls, texts=()):
        """The vocabulary is GPT-2's, whatever the corpus: texts are not read."""
        return cls()

    @property
    def vocab_size(self):
        return self.encoding.n_vocab

    def encode(self, text):
        """Token ids of a string, or a list of id lists for a list of strings. No specials are added."""
        if isinstance(text, str):
            return self.encoding.encode_ordinary(text)
        return [self.encoding.encode_ordinary(t) for t in text]

    def encode_lines(self, lines):
        """Each text (a whole document, line breaks and all) as ids... <|endoftext|>: one id list per text."""
        documents = [self.encoding.encode_ordinary(line) for line in lines]
        for ids in documents:
            ids.append(self.eot_id)
        return documents

    def decode(self, ids):
        """The text of a sequence of ids. Bytes that stop inside a UTF-8 character read as U+FFFD."""
        return self.encoding.decode(list(ids))

    def stream_decoder(self):
        """A function of one id that returns the text it adds: only whole characters, so a token that ends inside
        one adds nothing until the next completes it. Its returns join to decode(ids) but for the U+FFFD that
        decode gives bytes left incomplete at the end."""
        utf8 = codecs.getincrementaldecoder('utf-8')(errors='replace')  # decode's errors, byte by byte
        token_bytes = self.encoding.decode_single_token_bytes
        return lambda i: utf8.decode(token_bytes(i))

    def to_meta(self):
        return {'kind': self.kind, 'encoding': self.encoding.name, 'vocab_size': self.vocab_size,
                'eot_id': self.eot_id, 'special_ids': special_ids(self)}

    @classmethod
    def from_meta(cls, meta):
        return cls(meta['encoding'])

    def __getstate__(self):  # worker processes of prepare.py rebuild the encoding from tiktoken's registry
        return {'encoding': self.encoding.name}

    def __setstate__(self, state):
        self.__init__(state['encoding'])


def load_tiktoken_encoding(name):
    """tiktoken's encoding name, its files read from the cache the environment names (TIKTOKEN_CACHE_DIR, or
    tiktoken's older DATA_GYM_CACHE_DIR), else from the project's cache where it exists, else as tiktoken does."""
    if {'TIKTOKEN_CACHE_DIR', 'DATA_GYM_CACHE_DIR'} & set(os.environ) or not os.path.isdir(PROJECT_TIKTOKEN_CACHE):
        return tiktoken.get_encoding(name)
    os.environ['TIKTOKEN_CACHE_DIR'] = PROJECT_TIKTOKEN_CACHE  # tiktoken reads it from there only, at loading
    try:
        return tiktoken.get_encoding(name)
    finally:
        del os.environ['TIKTOKEN_CACHE_DIR']


class LearnedBPETokenizer:
    """Byte-level BPE learned from a corpus: every string encodes, decode(encode(s)) == s.

        0-3 the specials    4-259 the bytes 0x00-0xff    260 ... the learned tokens, in the order they were merged

    The text is first split by GPT-4's pattern (words with their leading space, numbers of up to 3 digits,
    punctuation runs, whitespace), so a token never spans two words. The vocabulary is stored as the learned
    tokens' bytes (to_meta's 'tokens': each byte as the character of that code point, i.e. latin-1), plain
    strings that meta.json and a weights_only checkpoint hold as they are.
    """
    kind = 'learned_bpe'
    unit = 'char'
    unk_id, bos_id, eos_id, pad_id = None, BOS_ID, EOS_ID, PAD_ID
    special_text = {UNK_ID: '', BOS_ID: '', EOS_ID: '\n', PAD_ID: ''}  # as the char and word tokenizers read
    first_learned = len(SPECIALS) + 256
    max_vocab_size = 1 << 16  # token ids are stored as uint16
    # GPT-4's split pattern (rustbpe's default, written here so that a vocabulary always encodes as it was learned)
    pattern = (r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"
               r"|\s*[\r\n]|\s+(?!\S)|\s+")

    def __init__(self, tokens, pattern=None):
        self.tokens = list(tokens)  # the learned tokens' bytes, id first_learned onward
        self.pattern = pattern or self.pattern
        ranks = {bytes([b]): len(SPECIALS) + b for b in range(256)}
        for i, token in enumerate(self.tokens, self.first_learned):
            ranks.setdefault(token, i)  # two merges may spell the same bytes: the first id is the one encoded
        # tiktoken merges the pair whose result has the lowest rank first: the learned order, ids shifted by 4
        self.encoding = tiktoken.Encoding(f'learned_bpe_{len(self.tokens)}', pat_str=self.pattern,
                                          mergeable_ranks=ranks, special_tokens={})

    @classmethod
    def build(cls, texts, vocab_size, total=None):
        """Learn vocab_size ids (specials included) from texts, an iterable of strings read once, in order.

        Memory grows with the distinct pieces of text, not the corpus: rustbpe counts the pieces of a buffer of
        texts at a time, in parallel. total (texts' length, if known) sizes the progress bar.
        """
        import rustbpe
        cls.check_vocab_size(vocab_size)

        def counted():
            yield from tqdm(texts, total=total, desc='learn bpe: count', unit='doc', unit_scale=True, mininterval=1)
            tqdm.write(f"learn bpe: merging the most frequent pairs, up to {vocab_size:,} ids")
        learner = rustbpe.Tokenizer()
        learner.train_from_iterator(counted(), vocab_size - len(SPECIALS), pattern=cls.pattern)
        if learner.vocab_size < vocab_size - len(SPECIALS):  # every piece of the text is one token already
            raise UserError(f"the training text yields only {learner.vocab_size + len(SPECIALS):,} ids, not"
                            f" --vocab_size={vocab_size:,}: ask for at most that many, or give it more text")
        by_rank = sorted((rank, bytes(token)) for token, rank in learner.get_mergeable_ranks())
        return cls([token for rank, token in by_rank if rank >= 256])

    @classmethod
    def check_vocab_size(cls, vocab_size):
        if not cls.first_learned <= vocab_size <= cls.max_vocab_size:
            raise UserError(f"--vocab_size={vocab_size} must be {cls.first_learned:,} (4 specials + 256 bytes) to"
                            f" {cls.max_vocab_size:,} (what uint16 token ids hold)")

    @property
    def vocab_size(self):
        return self.first_learned + len(self.tokens)

    def encode(self, text):
        """Token ids of a string, or a list of id lists for a list of strings. No specials are added."""
        if isinstance(text, str):
            return self.encoding.encode_ordinary(text)
        return [self.encoding.encode_ordinary(t) for t in text]

    def encode_lines(self, lines):
        """Each text (a whole document, line breaks and all) as <s> ids... </s>: one id list per text."""
        return [[self.bos_id, *self.encoding.encode_ordinary(line), self.eos_id] for line in lines]

    def decode(self, ids):
        """The text of a sequence of ids; </s> reads as a line break, <s> and padding as nothing. Bytes that stop
        inside a UTF-8 character read as U+FFFD."""
        parts = []
        for is_special, run in itertools.groupby(ids, key=lambda i: i < len(SPECIALS)):
            parts.append(''.join(self.special_text[i] for i in run) if is_special else
                         self.encoding.decode(list(run)))
        return ''.join(parts)

    def stream_decoder(self):
        """A function of one id that returns the text it adds, whole characters only, as BPETokenizer's does;
        a special reads as decode reads it, after the replacement character of any bytes it cut short."""
        utf8 = codecs.getincrementaldecoder('utf-8')(errors='replace')  # decode's errors, byte by byte
        token_bytes = self.encoding.decode_single_token_bytes

        def decode_next(i):
            if i >= len(SPECIALS):
                return utf8.decode(token_bytes(i))
            cut_short = utf8.decode(b'', final=True)
            utf8.reset()
            return cut_short + self.special_text[i]
        return decode_next

    def to_meta(self):
        return {'kind': self.kind, 'vocab_size': self.vocab_size, 'pattern': self.pattern,
                'tokens': [token.decode('latin-1') for token in self.tokens], 'special_ids': special_ids(self)}

    @classmethod
    def from_meta(cls, meta):
        return cls([token.encode('latin-1') for token in meta['tokens']], meta['pattern'])

    def __getstate__(self):  # worker processes of prepare.py rebuild the encoding from the vocabulary
        return self.to_meta()

    def __setstate__(self, state):
        self.__dict__.update(self.from_meta(state).__dict__)


class MidiTokenizer:
    """Music as performance events on a time grid: notes (music.Note) <-> token ids.

        0-3 the specials    NOTE_ON_p, NOTE_OFF_p for every MIDI pitch p    TIME_SHIFT_k for k = 1 ... max_shift

    A piece is read in time order: at each moment of the grid its note ends, then its note starts (each by
    rising pitch), then a shift to the next moment, in steps of at most max_shift (a longer rest takes several).
    Middle C and E for a quarter note, then G for an eighth, at steps_per_quarter 4:

        NOTE_ON_60 NOTE_ON_64 TIME_SHIFT_4 NOTE_OFF_60 NOTE_OFF_64 NOTE_ON_67 TIME_SHIFT_2 NOTE_OFF_67

    decode gives these names as text (so sample.py prints and streams them like words; </s> is a line break),
    encode reads them back, or encodes notes; to_notes gives the notes ids play (music.write_midi writes them).
    A model can write any order, and to_notes plays whatever it gets, by these rules:
        a NOTE_OFF of a pitch that is not sounding is ignored
        a NOTE_ON of a pitch already sounding ends that note there and starts it again
        </s> ends every note still sounding (what follows goes on from there: the next piece)
        at the end, every note still sounding ends
        a note that would last no time is dropped; <s>, padding and <?> are ignored
    """
    kind = 'midi'
    unit = 'note'
    unk_id, bos_id, eos_id, pad_id = UNK_ID, BOS_ID, EOS_ID, PAD_ID

    def __init__(self, steps_per_quarter=4, max_shift=0):
        self.steps_per_quarter = steps_per_quarter
        self.max_shift = max_shift or 8 * steps_per_quarter  # two whole notes
        self.note_on = len(SPECIALS)  # NOTE_ON_p is note_on + p
        self.note_off = self.note_on + music.PITCHES
        self.time_shift = self.note_off + music.PITCHES - 1  # TIME_SHIFT_k is time_shift + k
        self.vocab = [*SPECIALS, *(f'NOTE_ON_{p}' for p in range(music.PITCHES)),
                      *(f'NOTE_OFF_{p}' for p in range(music.PITCHES)),
                      *(f'TIME_SHIFT_{k}' for k in range(1, self.max_shift + 1))]
        self.ids = {name: i for i, name in enumerate(self.vocab)}
        self._text = ['<?> ', '', '\n', '', *(name + ' ' for name in self.vocab[len(SPECIALS):])]

    @classmethod
    def build(cls, texts=(), steps_per_quarter=4):
        """The vocabulary is fixed by the grid, whatever the corpus: texts are not read."""
        return cls(steps_per_quarter)

    @property
    def vocab_size(self):
        return len(self.vocab)

    def encode(self, piece):
        """Token ids of a piece: notes (pitch, onset, duration), or event names as decode writes them.
        No specials are added."""
        if isinstance(piece, str):  # a line break is </s>, as decode writes it
            return [self._event_id(name) for name in piece.replace('\n', ' </s> ').split()]
        notes = music.normalize(piece)
        events = sorted([(n.onset, 1, n.pitch) for n in notes] +
                        [(n.onset + n.duration, 0, n.pitch) for n in notes])
        ids, now = [], 0
        for time, is_on, pitch in events:
            while now < time:
                step = min(time - now, self.max_shift)
                ids.append(self.time_shift + step)
                now += step
            ids.append((self.note_on if is_on else self.note_off) + pitch)
        return ids

    def _event_id(self, name):
        i = self.ids.get(name)
        if i is None:
            raise UserError(f"unknown MIDI event {name!r}: write NOTE_ON_p, NOTE_OFF_p (p 0-{music.PITCHES - 1})"
                            f" or TIME_SHIFT_k (k 1-{self.max_shift}), separated by spaces")
        return i

    def encode_lines(self, pieces):
        """Each piece as <s> ids... </s>: one id list per piece."""
        return [[self.bos_id, *self.encode(piece), self.eos_id] for piece in pieces]

    def decode(self, ids):
        """The events as text: names each followed by a space; </s> a line break, <s> and padding nothing."""
        return ''.join(self._text[i] for i in ids)

    def stream_decoder(self):
        """A function of one id that returns the text it adds (see VocabTokenizer.stream_decoder)."""
        return self._text.__getitem__

    def to_notes(self, ids):
        """The notes that ids play, whatever their order (the rules in the class docstring)."""
        notes, sounding, now = [], {}, 0  # sounding: pitch -> onset

        def end(pitch):
            onset = sounding.pop(pitch)
            if now > onset:
                notes.append(music.Note(pitch, onset, now - onset))

        for i in ids:
            if i > self.time_shift:
                now += i - self.time_shift
            elif i >= self.note_off:
                if i - self.note_off in sounding:
                    end(i - self.note_off)
            elif i >= self.note_on:
                if i - self.note_on in sounding:
                    end(i - self.note_on)
                sounding[i - self.note_on] = now
            elif i == self.eos_id:
                for pitch in list(sounding):
                    end(pitch)
        for pitch in list(sounding):
            end(pitch)
        return sorted(notes, key=lambda n: (n.onset, n.pitch))

    def to_meta(self):
        return {'kind': self.kind, 'steps_per_quarter': self.steps_per_quarter, 'max_shift': self.max_shift,
                'vocab_size': self.vocab_size, 'special_ids': special_ids(self)}

    @classmethod
    def from_meta(cls, meta):
        return cls(meta['steps_per_quarter'], meta['max_shift'])


TOKENIZERS = {cls.kind: cls for cls in (CharTokenizer, WordTokenizer, BPETokenizer, LearnedBPETokenizer,
                                        MidiTokenizer)}


def special_ids(tokenizer):
    return {'unk': tokenizer.unk_id, 'bos': tokenizer.bos_id, 'eos': tokenizer.eos_id, 'pad': tokenizer.pad_id}


def from_meta(meta):
    """Rebuild a tokenizer from its to_meta() dict."""
    kind = meta.get('kind')
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[kind].from_meta(meta)
