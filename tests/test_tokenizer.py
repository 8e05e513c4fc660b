import itertools
import json
import os
import subprocess
import sys

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from configurator import UserError
from conftest import ROOT
from slm import tokenizer as tok
from tools import fetch_gpt2_vocab


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


def encode_elsewhere(tmp_path, **env):
    """Encode 'hello world' with the bpe tokenizer in a fresh process started in tmp_path, offline (a proxy
    that refuses every connection), with no tiktoken cache variable but those in env; its output lines."""
    env = {**{k: v for k, v in os.environ.items() if k not in ('TIKTOKEN_CACHE_DIR', 'DATA_GYM_CACHE_DIR')},
           'TMPDIR': str(tmp_path), 'HTTPS_PROXY': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9', **env}
    code = ("from slm import tokenizer; import configurator\n"
            "try: print(tokenizer.BPETokenizer().encode('hello world'))\n"
            "except configurator.UserError as error: print(error)")
    result = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_bpe_reads_the_project_vocabulary_cache_by_default_and_the_environment_wins(tmp_path, gpt2_vocab):
    assert tok.PROJECT_TIKTOKEN_CACHE == fetch_gpt2_vocab.DEFAULT_DIR  # where `make test` puts the files
    assert encode_elsewhere(tmp_path) == '[31373, 995]'  # no variable set, the cwd elsewhere: the project's cache
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert encode_elsewhere(tmp_path, TIKTOKEN_CACHE_DIR=str(empty)).startswith(
        'tiktoken cannot load the gpt2 BPE vocabulary')  # the user's (empty) cache, not the project's


def streamed(tokenizer, ids):
    """The pieces of text tokenizer's stream decoder returns for ids given one by one, prefix by prefix."""
    decode_next = tokenizer.stream_decoder()
    return list(itertools.accumulate((decode_next(i) for i in ids), initial=''))[1:]


def assert_streams_as_it_decodes(tokenizer, ids):
    """After every id, the text streamed so far is the decode of the ids so far, except that the U+FFFD which
    decode gives bytes that end inside a character (at most three of them) are not streamed until they are."""
    for n, text in enumerate(streamed(tokenizer, ids), 1):
        whole = tokenizer.decode(ids[:n])
        assert whole.startswith(text) and whole[len(text):] in ('', '\ufffd', '\ufffd' * 2, '\ufffd' * 3), n


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_every_vocabulary_tokenizer_streams_exactly_its_decode(data):
    tokenizer = data.draw(st.sampled_from([tok.CharTokenizer.build(CORPUS), tok.WordTokenizer.build(CORPUS),
                                           tok.MidiTokenizer.build()]))
    ids = data.draw(st.lists(st.integers(0, tokenizer.vocab_size - 1), max_size=40))
    assert ''.join(map(tokenizer.stream_decoder(), ids)) == tokenizer.decode(ids)


@pytest.mark.parametrize('text', ['🐉', 'é🐉 said “héllo”', '日本語のテキストを書く', 'Zoë\n\n😀😃 👍🏽 x', 'a\u0301\u200d'])
def test_bpe_streams_whole_characters_across_the_tokens_that_split_them(bpe, text):
    ids = bpe.encode(text)
    assert any(bpe.decode(ids[:n]).endswith('\ufffd') for n in range(1, len(ids) + 1))  # a token ends mid-way
    assert_streams_as_it_decodes(bpe, ids)
    assert streamed(bpe, ids)[-1] == text


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 255) | st.integers(0, 50256), max_size=30))  # 0-255: GPT-2's one-byte tokens
def test_bpe_streams_exactly_its_decode_for_any_ids(bpe, ids):  # bytes that make no UTF-8 included
    assert_streams_as_it_decodes(bpe, ids)


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
@given(st.data())
def test_learned_bpe_streams_exactly_its_decode_for_any_ids(learned, data):  # specials, broken UTF-8 included
    ids = data.draw(st.lists(st.integers(0, learned.vocab_size - 1), max_size=30))
    assert_streams_as_it_decodes(learned, ids)
    text = 'é🐉 said “héllo” then'
    assert streamed(learned, learned.encode(text))[-1] == text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_learned_bpe_round_trip_any_text(learned, text):
    ids = learned.encode(text)
    assert learned.decode(ids) == text and all(4 <= i < learned.vocab_size for i in ids)
    assert learned.decode([learned.bos_id, *ids, learned.eos_id]) == text + '\n'
