import collections
import json
import os

import numpy as np
import pytest

import prepare
import storage
import tokenizer as tok
from configurator import UserError
from conftest import documents_of


@pytest.mark.parametrize('data', ['char_data', 'word_data'])
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
