"""prepare.py on dataset sources (TinyStories-style JSON lines, parquet, text, directories) with GPT-2 BPE."""
import collections
import json
import os

import numpy as np
import pytest

from configurator import UserError
from conftest import STORIES, documents_of, run_script
import prepare
from slm import corpus, storage
from slm import tokenizer as tok


EOT = 50256


def files_of(data_dir):
    return {name: open(os.path.join(data_dir, name), 'rb').read() for name in sorted(os.listdir(data_dir))}


def test_decoding_the_bins_gives_back_every_story(bpe_data, stories):
    train, val = documents_of(bpe_data, 'train'), documents_of(bpe_data, 'val')
    assert collections.Counter(train + val) == collections.Counter(stories)
    assert len(val) == 9 and len(train) == 27  # 25% of 36 held out with the seeded shuffle
    assert any('\n\n' in story for story in train + val) and any('ñ' in story for story in train + val)


def test_end_of_text_between_stories_and_exact_ids(bpe_data, stories):
    meta = storage.load_meta(bpe_data)
    tokens, offsets = storage.open_split(bpe_data, 'train', meta)
    assert tokens.dtype == np.uint16 and offsets[0] == 0 and offsets[-1] == len(tokens)
    assert np.all(tokens[offsets[1:] - 1] == EOT) and np.count_nonzero(tokens == EOT) == len(offsets) - 1
    bpe = tok.BPETokenizer()
    first = documents_of(bpe_data, 'train')[0]
    assert tokens[:offsets[1]].tolist() == bpe.encode(first) + [EOT]


def test_meta_records_gpt2_bpe_counts_and_source(bpe_data, stories):
    meta = storage.load_meta(bpe_data)
    assert meta['tokenizer'] == {'kind': 'bpe', 'encoding': 'gpt2', 'vocab_size': 50257, 'eot_id': EOT,
                                 'special_ids': {'unk': None, 'bos': EOT, 'eos': EOT, 'pad': None}}
    assert meta['vocab_size'] == 50257 and meta['dtype'] == 'uint16'
    assert meta['source'] == STORIES and meta['origin'] == STORIES and meta['options']['text_column'] == 'text'
    bpe = tok.BPETokenizer()
    splits = meta['splits']
    assert splits['train']['documents'] + splits['val']['documents'] == 36
    assert splits['train']['tokens'] + splits['val']['tokens'] == sum(len(bpe.encode(s)) + 1 for s in stories)
    assert splits['train']['chars'] + splits['val']['chars'] == sum(len(s) + 1 for s in stories)
    for name, info in meta['files'].items():
        assert storage.file_digest(os.path.join(bpe_data, name)) == info


def test_one_and_two_processes_write_identical_files(tmp_path, gpt2_vocab):
    one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
    # batches of 4 stories, so 2 processes each get several batches
    prepare.main([one, f'--source={STORIES}', '--num_proc=1', '--batch_size=4'])
    meta = prepare.main([two, f'--source={STORIES}', '--num_proc=2', '--batch_size=4'])
    assert meta['options']['num_proc'] == 2
    one_files, two_files = files_of(one), files_of(two)
    meta_one, meta_two = (json.loads(files.pop('meta.json')) for files in (one_files, two_files))
    assert one_files == two_files and meta_one['files'] == meta_two['files']
    assert sorted(one_files) == ['train.bin', 'train.docs.npy', 'val.bin', 'val.docs.npy']  # no temporaries left


def test_max_docs_keeps_the_first_training_stories_and_the_whole_val_split(tmp_path, bpe_data):
    data_dir = str(tmp_path / 'few')
    meta = prepare.main([data_dir, f'--source={STORIES}', '--val_fraction=0.25', '--max_docs=5'])
    assert meta['splits']['train']['documents'] == 5
    assert documents_of(data_dir, 'train') == documents_of(bpe_data, 'train')[:5]
    assert documents_of(data_dir, 'val') == documents_of(bpe_data, 'val')
    meta = prepare.main([data_dir, f'--source={STORIES}', '--max_docs=1000'])  # more than there are: all
    assert meta['splits']['train']['documents'] == 32


def test_published_splits_are_used_as_they_are(tmp_path, stories, gpt2_vocab):
    source = tmp_path / 'published'
    source.mkdir()
    for name, part in (('train', stories[:30]), ('validation', stories[30:])):
        with open(source / f'{name}.jsonl', 'w', encoding='utf-8') as f:
            f.writelines(json.dumps({'text': s, 'id': i}) + '\n' for i, s in enumerate(part))
    data_dir = str(tmp_path / 'out')
    meta = prepare.main([data_dir, f'--source={source}', '--max_docs=20'])
    assert documents_of(data_dir, 'train') == stories[:20]  # in source order, not shuffled
    assert documents_of(data_dir, 'val') == stories[30:]
    assert meta['splits']['val']['documents'] == 6


def test_parquet_and_text_files_and_other_tokenizers(tmp_path, stories, gpt2_vocab):
    import datasets
    parquet = str(tmp_path / 'stories.parquet')
    datasets.Dataset.from_dict({'story': stories}).to_parquet(parquet)
    prepare.main([str(tmp_path / 'pq'), f'--source={parquet}', '--text_column=story'])
    assert sorted(documents_of(str(tmp_path / 'pq'), 'train') + documents_of(str(tmp_path / 'pq'), 'val')) == \
        sorted(stories)
    text = tmp_path / 'lines.txt'
    text.write_text('The cat sat.\n\n   \nThe dog ran.\nA bird sang.\n', encoding='utf-8')
    meta = prepare.main([str(tmp_path / 'txt'), f'--source={text}'])  # blank lines are not documents
    assert meta['splits']['train']['documents'] + meta['splits']['val']['documents'] == 3
    # the directory name picks the character tokenizer for the same dataset source
    meta = prepare.main([str(tmp_path / 'stories_char'), f'--source={STORIES}'])
    assert meta['tokenizer']['kind'] == 'char' and meta['tokenizer']['vocab'][:4] == list(tok.SPECIALS)


def test_tinystories_name_means_the_hub_dataset_with_bpe(tmp_path):
    cfg = corpus.resolve(corpus.PrepareConfig(data_dir=str(tmp_path / 'tinystories')))
    assert (cfg.source, cfg.tokenizer) == ('tinystories', 'bpe')
    cfg = corpus.resolve(corpus.PrepareConfig(data_dir=str(tmp_path / 'tinystories_char')))
    assert (cfg.source, cfg.tokenizer) == ('tinystories', 'char')
    # offline in tests, so the real hub loading code runs and fails with one line naming the dataset
    with pytest.raises(UserError, match="cannot load dataset 'roneneldan/TinyStories'"):
        prepare.main([str(tmp_path / 'tinystories')])
    assert not os.path.exists(tmp_path / 'tinystories')


def test_unknown_dataset_is_one_line_exit_2_and_writes_nothing(tmp_path):
    result = run_script('prepare.py', str(tmp_path / 'out'), '--source=nobody/no-such-dataset', cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot load dataset 'nobody/no-such-dataset'")
    assert 'Traceback' not in result.stderr and not os.path.exists(tmp_path / 'out')


@pytest.mark.parametrize('content, args, message', [
    ('{"story": "a", "id": 1}\n', [], "has no column 'text'; its columns are story, id: pass --text_column"),
    ('{"text": 1}\n{"text": 2}\n', [], "column 'text' of .* holds int64, not text"),
    ('', [], 'is empty'),
    ('{"text": ""}\n{"text": "  "}\n', [], 'the train split has no text'),
    ('{"text": "a"}\n{"text": "b"}\n', ['--max_docs=0'], r'--max_docs=0 must be positive'),
    ('{"text": "a"}\n{"text": "b"}\n', ['--max_docs=-5'], r'--max_docs=-5 must be positive'),
    (None, [], 'not found'),
])
def test_bad_dataset_source_is_a_user_error_and_leaves_the_previous_files(tmp_path, bpe_data, content, args,
                                                                          message):
    data_dir = tmp_path / 'kept'
    data_dir.mkdir()
    for name, data in files_of(bpe_data).items():
        (data_dir / name).write_bytes(data)
    source = tmp_path / 'bad.jsonl'
    if content is not None:
        source.write_text(content, encoding='utf-8')
    with pytest.raises(UserError, match=message):
        prepare.main([str(data_dir), f'--source={source}', *args])
    assert files_of(str(data_dir)) == files_of(bpe_data)  # same files, same bytes, no partial bins


def test_token_caches_live_outside_the_data_directory_and_a_killed_runs_are_removed(tmp_path, gpt2_vocab):
    import datasets
    root = os.path.join(datasets.config.HF_DATASETS_CACHE, 'prepare-tokens')
    stale = os.path.join(root, '.tokens.tmp-999999999')  # no such process: a run that was killed
    os.makedirs(stale, exist_ok=True)
    open(os.path.join(stale, 'tmpabcdefgh'), 'wb').close()
    data_dir = str(tmp_path / 'out')
    prepare.main([data_dir, f'--source={STORIES}'])
    assert not os.path.exists(stale) and os.listdir(root) == []  # and this run's own directory is gone too
    assert sorted(os.listdir(data_dir)) == ['meta.json', 'train.bin', 'train.docs.npy', 'val.bin', 'val.docs.npy']
