import json

import pytest
from hypothesis import given, settings, strategies as st

import tokenizer as tok
from configurator import UserError

CORPUS = ["Hello? You're here.", "In the beginning God created  the heaven\tand the earth!"]
VOCAB_KINDS = {kind: cls for kind, cls in tok.TOKENIZERS.items() if issubclass(cls, tok.VocabTokenizer)}


def test_special_ids_are_fixed_for_every_vocabulary_kind():
    assert set(VOCAB_KINDS) == {'char', 'word'}  # learned_bpe: test_learned_bpe_exact_ids_on_a_tiny_corpus
    for kind, cls in VOCAB_KINDS.items():
        t = cls.build(CORPUS)
        assert t.vocab[:4] == ['<?>', '<s>', '</s>', '<>'], kind
        assert (t.unk_id, t.bos_id, t.eos_id, t.pad_id) == (0, 1, 2, 3)


def test_char_tokenizer_exact_ids():
    t = tok.CharTokenizer.build(['abc', 'cab!'])
    assert t.vocab == ['<?>', '<s>', '</s>', '<>', '!', 'a', 'b', 'c']
    assert t.encode('cab!') == [7, 5, 6, 4]
    assert t.encode(['a', 'bc']) == [[5], [6, 7]]
    assert t.encode_lines(['ab', 'c']) == [[1, 5, 6, 2], [1, 7, 2]]
    assert t.encode('abz') == [5, 6, tok.UNK_ID]  # a character the corpus never had


def test_word_tokenizer_pieces_keep_punctuation_whitespace_and_apostrophes():
    t = tok.WordTokenizer.build(CORPUS)
    pieces = [t.vocab[i] for i in t.encode("Hello? You're here.")]
    assert pieces == ['Hello', '?', ' ', "You're", ' ', 'here', '.']
    assert t.decode(t.encode("Hello?")) == "Hello?"
    assert [t.vocab[i] for i in t.encode('God  created\tthe')] == ['God', '  ', 'created', '\t', 'the']


def test_word_vocab_orders_by_frequency_after_the_characters():
    t = tok.WordTokenizer.build(['b a b', 'c b a'])
    # specials, then every character, then pieces not already in the vocabulary by falling count
    assert t.vocab == ['<?>', '<s>', '</s>', '<>', ' ', 'a', 'b', 'c']
    t = tok.WordTokenizer.build(['ox ox cow', 'cow ox'])
    assert t.vocab[4:] == [' ', 'c', 'o', 'w', 'x', 'ox', 'cow']
    assert t.encode('ox cow') == [9, 4, 10]


def test_unknown_word_is_spelled_with_characters_not_lost():
    t = tok.WordTokenizer.build(CORPUS)
    ids = t.encode('Hole')
    assert [t.vocab[i] for i in ids] == ['H', 'o', 'l', 'e']
    assert t.decode(ids) == 'Hole'
    assert t.encode('Hi€') == [t.ids['H'], t.ids['i'], tok.UNK_ID]


def test_min_count_and_max_vocab_limit_the_words():
    t = tok.WordTokenizer.build(['aa aa bb'], min_count=2)
    assert 'aa' in t.ids and 'bb' not in t.ids
    assert t.decode(t.encode('bb aa')) == 'bb aa'
    t = tok.WordTokenizer.build(['aa aa bb cc'], max_vocab=9)
    assert t.vocab_size == 9 and t.vocab[-1] == 'aa'


def test_decode_reads_document_boundaries_as_line_breaks():
    t = tok.CharTokenizer.build(CORPUS)
    ids = [i for line in t.encode_lines(['Hello', 'here']) for i in line]
    assert t.decode(ids) == 'Hello\nhere\n'
    assert t.decode([tok.PAD_ID, *t.encode('he'), tok.UNK_ID]) == 'he<?>'


def test_meta_round_trip_through_json():
    for cls in VOCAB_KINDS.values():
        t = cls.build(CORPUS)
        again = tok.from_meta(json.loads(json.dumps(t.to_meta())))
        assert type(again) is cls and again.vocab == t.vocab
        assert again.encode(CORPUS[1]) == t.encode(CORPUS[1])


ALPHABET = sorted(set(''.join(CORPUS)))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=ALPHABET + ['\n', ' ', "'"], max_size=80))
def test_word_round_trip_any_text_over_the_corpus_alphabet(text):
    t = tok.WordTokenizer.build(CORPUS + ['\n'])
    assert t.decode(t.encode(text)) == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_word_round_trip_any_text_when_built_from_it(text):
    t = tok.WordTokenizer.build([text])
    assert t.decode(t.encode(text)) == text
    assert tok.UNK_ID not in t.encode(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_char_round_trip_any_text_when_built_from_it(text):
    t = tok.CharTokenizer.build([text])
    assert t.decode(t.encode(text)) == text
    assert len(t.encode(text)) == len(text)


@pytest.fixture(scope='module')
def bpe(gpt2_vocab):
    return tok.BPETokenizer.build(CORPUS)


def test_bpe_is_gpt2_with_exact_ids(bpe):
    # ids checked against tiktoken.get_encoding('gpt2') and GPT-2's encoder.json
    assert bpe.encode('Hello world') == [15496, 995]
    assert bpe.encode('Once upon a time, there was a little dog.') == [
        7454, 2402, 257, 640, 11, 612, 373, 257, 1310, 3290, 13]
    assert bpe.encode(['Hello', ' world']) == [[15496], [995]]
    assert bpe.vocab_size == 50257 and bpe.eot_id == 50256


def test_bpe_ends_every_document_with_end_of_text_and_has_no_unknown_or_padding(bpe):
    assert bpe.encode_lines(['Hello world', 'The end.\n\nBye']) == [[15496, 995, 50256],
                                                                     [464, 886, 13, 198, 198, 3886, 68, 50256]]
    assert (bpe.unk_id, bpe.bos_id, bpe.eos_id, bpe.pad_id) == (None, 50256, 50256, None)
    # the special token's text inside a document is ordinary text, not a document boundary
    assert 50256 not in bpe.encode('<|endoftext|>') and bpe.decode(bpe.encode('<|endoftext|>')) == '<|endoftext|>'
    assert bpe.decode([15496, 50256]) == 'Hello<|endoftext|>'


def test_bpe_meta_records_the_encoding_and_round_trips(bpe):
    meta = json.loads(json.dumps(bpe.to_meta()))
    assert meta == {'kind': 'bpe', 'encoding': 'gpt2', 'vocab_size': 50257, 'eot_id': 50256,
                    'special_ids': {'unk': None, 'bos': 50256, 'eos': 50256, 'pad': None}}
    again = tok.from_meta(meta)
    assert type(again) is tok.BPETokenizer and again.encode(CORPUS[1]) == bpe.encode(CORPUS[1])


def test_bpe_decode_of_a_cut_character_is_a_replacement_until_it_is_whole(bpe):
    ids = bpe.encode('é🐉')
    assert bpe.decode(ids) == 'é🐉' and len(ids) > 2  # the dragon takes more than one byte-level token
    assert bpe.decode(ids[:-1]).endswith('\ufffd')


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_bpe_round_trip_any_text(bpe, text):
    assert bpe.decode(bpe.encode(text)) == text


LEARN_FROM = ['the cat and the hat', 'then the end']


def test_learned_bpe_exact_ids_on_a_tiny_corpus():
    t = tok.LearnedBPETokenizer.build(LEARN_FROM, 264)
    # 'he' and 'th' tie at 4: the lower pair ('h' 104 < 't' 116) first; then ' the' and 'at' tie at 2
    assert [t.decode([i]) for i in range(260, 264)] == ['he', 'the', ' the', 'at']
    assert t.vocab_size == 264 and (t.unk_id, t.bos_id, t.eos_id, t.pad_id) == (None, 1, 2, 3)
    assert t.encode('the hat then') == [261, 4 + ord(' '), 4 + ord('h'), 263, 262, 4 + ord('n')]
    assert t.encode_lines(['the', 'é']) == [[1, 261, 2], [1, 4 + 0xc3, 4 + 0xa9, 2]]  # bytes are the base
    assert t.decode([1, 261, 2, 3, 1, 263, 2]) == 'the\nat\n'


def test_learned_bpe_meta_is_plain_json_and_round_trips():
    t = tok.LearnedBPETokenizer.build(LEARN_FROM + ['naïve café ☕'], 280)
    meta = t.to_meta()
    assert json.loads(json.dumps(meta)) == meta and all(type(s) is str for s in meta['tokens'])
    assert meta['special_ids'] == {'unk': None, 'bos': 1, 'eos': 2, 'pad': 3}
    again = tok.from_meta(meta)
    assert type(again) is tok.LearnedBPETokenizer and again.to_meta() == meta
    assert again.encode('naïve cat café ☕') == t.encode('naïve cat café ☕')


def test_learned_bpe_says_when_the_corpus_cannot_fill_the_vocabulary():
    with pytest.raises(UserError, match='yields only 2[0-9]{2} ids'):
        tok.LearnedBPETokenizer.build(LEARN_FROM, 400)
    for size in (259, 65537):
        with pytest.raises(UserError, match='260 .* to 65,536'):
            tok.LearnedBPETokenizer.build(LEARN_FROM, size)


@pytest.fixture(scope='module')
def learned():
    return tok.LearnedBPETokenizer.build(CORPUS + LEARN_FROM, 300)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_learned_bpe_round_trip_any_text(learned, text):
    ids = learned.encode(text)
    assert learned.decode(ids) == text and all(4 <= i < learned.vocab_size for i in ids)
    assert learned.decode([learned.bos_id, *ids, learned.eos_id]) == text + '\n'
