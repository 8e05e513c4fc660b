import collections
import dataclasses
import json
import os
import re

import datasets
import numpy as np
import pytest

from configurator import UserError
from conftest import documents_of, run_script
import prepare
from slm import corpus, storage
from slm import tokenizer as tok


@pytest.mark.parametrize('data', ['char_data', 'word_data', 'learned_data'])
def test_decoding_train_and_val_gives_back_every_document(data, verses, request):
    data_dir = request.getfixturevalue(data)
    train, val = documents_of(data_dir, 'train'), documents_of(data_dir, 'val')
    assert collections.Counter(train + val) == collections.Counter(verses)
    assert len(val) == 40 and len(train) == 360  # 10% of 400 documents held out


def test_meta_counts_and_dtype(char_data, verses):
    meta = storage.load_meta(char_data)
    assert meta['tokenizer']['kind'] == 'char' and meta['dtype'] == 'uint16'
    total = meta['splits']['train']['tokens'] + meta['splits']['val']['tokens']
    assert total == sum(len(v) + 2 for v in verses)  # every character plus <s> and </s>
    chars = meta['splits']['train']['chars'] + meta['splits']['val']['chars']
    assert chars == sum(len(v) + 1 for v in verses)
    for name, info in meta['files'].items():
        assert storage.file_digest(os.path.join(char_data, name)) == info


def test_split_is_a_seeded_shuffle(corpus_file, tmp_path, verses):
    a, b, c = (str(tmp_path / name) for name in 'abc')
    prepare.main([a, f'--input={corpus_file}'])
    prepare.main([b, f'--input={corpus_file}'])
    prepare.main([c, f'--input={corpus_file}', '--seed=7', '--val_fraction=0.25'])
    assert documents_of(a, 'val') == documents_of(b, 'val')
    assert documents_of(a, 'val') != verses[:40]  # shuffled, not the first documents
    assert len(documents_of(c, 'val')) == 100 and documents_of(c, 'val')[:40] != documents_of(a, 'val')


def test_akjv_source_and_directory_name_convention(tmp_path):
    meta = prepare.main([str(tmp_path / 'akjv_char_booked')])
    assert meta['source'] == 'akjv' and meta['tokenizer']['kind'] == 'char'
    assert meta['options']['booked'] is True
    first = sorted(documents_of(str(tmp_path / 'akjv_char_booked'), 'train') +
                   documents_of(str(tmp_path / 'akjv_char_booked'), 'val'))
    assert 'Genesis: In the beginning God created the heaven and the earth.' in first
    assert meta['splits']['train']['documents'] + meta['splits']['val']['documents'] == 31102


def test_large_vocabulary_switches_to_uint32(tmp_path):
    corpus = tmp_path / 'many.txt'
    corpus.write_text('\n'.join(f'w{i} w{i + 1}' for i in range(0, 70000, 2)))
    meta = prepare.main([str(tmp_path / 'many'), f'--input={corpus}'])
    assert meta['vocab_size'] > 65536 and meta['dtype'] == 'uint32'
    assert documents_of(str(tmp_path / 'many'), 'val')[0].startswith('w')


def test_failed_prepare_keeps_the_previous_files(corpus_file, tmp_path, monkeypatch):
    data_dir = str(tmp_path / 'keep')
    prepare.main([data_dir, f'--input={corpus_file}'])
    before = {n: open(os.path.join(data_dir, n), 'rb').read() for n in os.listdir(data_dir)}

    def broken(*args, **kwargs):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(storage, 'publish_dataset', broken)
    with pytest.raises(OSError):
        prepare.main([data_dir, f'--input={corpus_file}', '--tokenizer=char'])
    after = {n: open(os.path.join(data_dir, n), 'rb').read() for n in os.listdir(data_dir)}
    assert after == before  # same files, same bytes, no temporaries left behind


def test_meta_and_bins_must_agree(char_data, tmp_path):
    data_dir = tmp_path / 'torn'
    data_dir.mkdir()
    for name in os.listdir(char_data):
        (data_dir / name).write_bytes(open(os.path.join(char_data, name), 'rb').read())
    with open(data_dir / 'val.bin', 'ab') as f:
        f.write(b'\0\0')
    with pytest.raises(UserError, match='val.bin does not match'):
        storage.load_meta(str(data_dir))


@pytest.mark.parametrize('content, message', [
    (None, 'not found'),
    (b'', 'has no text'),
    (b'\n  \n', 'has no text'),
    (b'fine line\nbad \xff byte\n', r'not UTF-8 \(byte 0xff at line 2, column 5\)'),
    (b'only one document\n', 'needs at least 2'),
])
def test_bad_corpus_is_a_user_error(tmp_path, content, message):
    corpus = tmp_path / 'corpus.txt'
    if content is not None:
        corpus.write_bytes(content)
    with pytest.raises(UserError, match=message):
        prepare.main([str(tmp_path / 'out'), f'--input={corpus}'])
    assert not os.path.exists(tmp_path / 'out' / 'meta.json')


def test_unknown_source_and_tokenizer(tmp_path):
    with pytest.raises(UserError, match="unknown source 'mystery'"):
        prepare.main([str(tmp_path / 'mystery')])
    with pytest.raises(UserError, match='unknown --tokenizer=bytes'):
        prepare.main([str(tmp_path / 'akjv'), '--tokenizer=bytes'])


def test_bins_are_plain_arrays(char_data):
    tokens = np.fromfile(os.path.join(char_data, 'train.bin'), dtype=np.uint16)
    offsets = np.load(os.path.join(char_data, 'train.docs.npy'))
    assert offsets[0] == 0 and offsets[-1] == len(tokens) and np.all(np.diff(offsets) >= 2)
    assert np.all(tokens[offsets[:-1]] == tok.BOS_ID) and np.all(tokens[offsets[1:] - 1] == tok.EOS_ID)
    assert json.load(open(os.path.join(char_data, 'meta.json')))['splits']['train']['documents'] == 360


def test_learned_bpe_is_named_by_the_directory_and_learned_from_the_training_split(learned_data):
    meta = storage.load_meta(learned_data)
    assert meta['tokenizer']['kind'] == 'learned_bpe' and meta['vocab_size'] == 400 and meta['dtype'] == 'uint16'
    assert meta['options']['tokenizer'] == 'learned_bpe' and meta['options']['vocab_size'] == 400


def test_learned_vocabulary_never_sees_the_validation_split(verses):
    # 'Zyzzogeton' is in every validation document and nowhere in training
    splits = {'train': datasets.Dataset.from_dict({'text': verses[:200]}),
              'val': datasets.Dataset.from_dict({'text': ['The Zyzzogeton Zyzzogeton came.'] * 100})}
    cfg = corpus.PrepareConfig(tokenizer='learned_bpe', vocab_size=600)
    from_train = corpus.build_tokenizer(cfg, splits)
    from_all = corpus.build_tokenizer(dataclasses.replace(cfg, bpe_learn_from='all'), splits)
    assert len(from_train.encode(' Zyzzogeton')) > 2
    assert len(from_all.encode(' Zyzzogeton')) == 1  # the control: learned from val too, it is one token
    assert 'yzzog' not in ''.join(from_train.decode([i]) for i in range(260, 600))


def test_learned_bpe_prepare_is_deterministic(corpus_file, tmp_path):
    # two processes (their hash maps seeded differently): the same vocabulary and the same bytes
    runs = [run_script('prepare.py', str(tmp_path / name), f'--input={corpus_file}', '--vocab_size=500')
            for name in ('a', 'b')]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    a, b = (storage.load_meta(str(tmp_path / name)) for name in ('a', 'b'))
    assert a['tokenizer'] == b['tokenizer'] and len(a['tokenizer']['tokens']) == 500 - 260
    assert a['files'] == b['files']  # sizes and sha256 of train.bin, val.bin and the offsets


@pytest.mark.parametrize('args, message', [
    (['--vocab_size=259'], r'--vocab_size=259 must be 260 \(4 specials \+ 256 bytes\) to 65,536'),
    (['--vocab_size=65537'], '--vocab_size=65537 must be 260'),
    (['--vocab_size=30000'], 'the training text yields only [0-9,]+ ids, not --vocab_size=30,000'),
    (['--vocab_size=512', '--tokenizer=char'], '--vocab_size=512 learns a byte-level BPE, not a char vocabulary'),
    (['--tokenizer=learned_bpe'], '--tokenizer=learned_bpe needs --vocab_size=N'),
])
def test_bad_vocab_size_is_one_line_and_writes_nothing(corpus_file, tmp_path, args, message):
    result = run_script('prepare.py', str(tmp_path / 'out'), f'--input={corpus_file}', *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and re.fullmatch(f'error: {message}.*', lines[-1]), result.stderr
    assert 'Traceback' not in result.stderr and not os.path.exists(tmp_path / 'out')
