"""Tokenizers: text <-> token ids. The model never sees text, only the ids made here.

Three kinds share one interface (build, encode, encode_lines, decode, to_meta, vocab_size and the special ids
unk_id, bos_id, eos_id, pad_id). The character and word tokenizers learn their vocabulary from the corpus and
put their special tokens at fixed indices:

    0 <?>  unknown      1 <s>  start of a document      2 </s>  end of a document      3 <>  padding

The bpe tokenizer is GPT-2's byte-level BPE through tiktoken: a fixed vocabulary of 50,257 ids whose last,
50256 <|endoftext|>, ends every document. Bytes cannot be unknown and nothing is padded, so unk_id and
pad_id are None; bos_id is the end-of-text id too, so a prompt starts the way every document after the
first does in training: right after the previous document's <|endoftext|>.

A tokenizer serializes to a plain dict (to_meta) that prepare.py writes into meta.json and train.py into
every checkpoint; from_meta rebuilds it with nothing else at hand.
"""
import collections
import re

import tiktoken

from configurator import UserError

SPECIALS = ('<?>', '<s>', '</s>', '<>')
UNK_ID, BOS_ID, EOS_ID, PAD_ID = range(len(SPECIALS))


class VocabTokenizer:
    """A tokenizer over an explicit vocabulary list: specials first, then the learned tokens."""
    kind = None
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
    unk_id = pad_id = None

    def __init__(self, encoding='gpt2'):
        try:
            self.encoding = tiktoken.get_encoding(encoding)
        except (OSError, ValueError) as error:  # requests' ConnectionError is an OSError
            raise UserError(f"tiktoken cannot load the {encoding} BPE vocabulary ({type(error).__name__}):"
                            f" go online once, or run `python tools/fetch_gpt2_vocab.py` and set"
                            f" TIKTOKEN_CACHE_DIR=.tiktoken_cache")
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


TOKENIZERS = {cls.kind: cls for cls in (CharTokenizer, WordTokenizer, BPETokenizer)}


def special_ids(tokenizer):
    return {'unk': tokenizer.unk_id, 'bos': tokenizer.bos_id, 'eos': tokenizer.eos_id, 'pad': tokenizer.pad_id}


def from_meta(meta):
    """Rebuild a tokenizer from its to_meta() dict."""
    kind = meta.get('kind')
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[kind].from_meta(meta)
