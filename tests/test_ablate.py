import json
import os
import shutil

import numpy as np
import pytest

import ablate
import storage
from configurator import UserError
from conftest import TINY_GPT

BUDGET = 3000  # real target tokens per run: 12 iterations of 8 x 32 positions at 100% targets


@pytest.fixture(scope='module')
def windowing_run(tmp_path_factory, char_data):
    out = tmp_path_factory.mktemp('ablate')
    args = [f'--data_dir={char_data}', f'--out_dir={out}/out', *TINY_GPT, '--eval_tokens=512', '--what=windowing',
            '--windowings=random,lines_slide,packed', f'--target_tokens={BUDGET}', '--points=2',
            '--eval_documents=20']
    return args, ablate.main(args), out / 'out-ablate-windowing'


def test_every_run_learns_the_same_target_tokens(windowing_run):
    _, results, _ = windowing_run
    assert [r['name'] for r in results] == ['random', 'lines_slide', 'packed']
    for r in results:
        per_iter = 8 * 32 * r['target_share']
        assert abs(r['target_tokens'] - BUDGET) <= per_iter / 2  # as close as whole iterations allow
        assert r['target_tokens'] == pytest.approx(r['iters'] * per_iter)
        assert [p['iter'] for p in r['curve']] == [round(r['iters'] / 2), r['iters']]
    by_name = {r['name']: r for r in results}
    assert by_name['random']['iters'] == 12 and by_name['random']['target_share'] == 1
    assert by_name['lines_slide']['target_share'] < 1 and by_name['lines_slide']['iters'] > 12  # it pads


def test_every_run_is_scored_on_the_same_held_out_targets(windowing_run, char_data):
    _, results, directory = windowing_run
    with open(directory / 'results.json') as f:
        written = json.load(f)
    offsets = np.load(os.path.join(char_data, 'val.docs.npy'))
    assert written['documents'] == 20 and written['targets'] == int(offsets[20] - 20)  # each verse but its <s>
    assert written['chars'] == written['targets']  # character level: a target per character and line break
    assert written['results'] == results
    for r in results:  # the last point of the curve is the run's final checkpoint, scored again here
        documents, chars = ablate.held_out(ablate.AblateConfig(eval_documents=20), char_data)
        assert chars == written['chars']
        cfg = ablate.AblateConfig(data_dir=char_data, batch_size=8, device='cpu')
        loss, bits, _ = ablate.score(str(directory / r['name']), documents, chars, cfg)
        assert (loss, bits) == (r['val_loss'], r['val_bits_per_char'])
        assert 2 < r['val_loss'] < 4.5  # below uniform guessing over ~50 characters after 3000 targets


def test_table_and_plot_are_written(windowing_run):
    _, results, directory = windowing_run
    markdown = (directory / 'results.md').read_text()
    assert '| windowing | iterations | target tokens |' in markdown
    rows = [line for line in markdown.splitlines() if line.startswith('| `')]
    assert [row.split('`')[1] for row in rows] == ['random', 'lines_slide', 'packed']
    assert sum('**' in row for row in rows) == 1  # the best bits per character in bold
    assert (directory / 'ablation.png').stat().st_size > 5000


def test_a_finished_run_is_not_trained_again(windowing_run, capsys):
    args, results, directory = windowing_run
    before = os.path.getmtime(directory / 'random' / 'ckpt.pt')
    again = ablate.main(args)
    assert again == results and os.path.getmtime(directory / 'random' / 'ckpt.pt') == before
    assert 'random: already done' in capsys.readouterr().out


def smaller_copy(source, target, keep_documents):
    """A prepared directory like source whose train split keeps only its first documents (val untouched)."""
    shutil.copytree(source, target)
    meta = storage.load_meta(target)
    tokens, offsets = storage.open_split(target, 'train', meta)
    bin_path, docs_path = storage.split_paths(target, 'train')
    written = {path: storage.temporary_path(path) for split in storage.SPLITS
               for path in storage.split_paths(target, split)}
    for path in storage.split_paths(target, 'val'):
        shutil.copy(path, written[path])
    np.asarray(tokens[:offsets[keep_documents]]).tofile(written[bin_path])
    with open(written[docs_path], 'wb') as f:
        np.save(f, offsets[:keep_documents + 1])
    meta['splits']['train'] = {'tokens': int(offsets[keep_documents]), 'documents': keep_documents, 'chars': 0}
    storage.publish_dataset(target, meta, written)


def test_data_size_ablation_scores_every_size_on_the_same_val_split(char_data, tmp_path):
    small, full = str(tmp_path / 'genesis_40'), str(tmp_path / 'genesis_all')
    smaller_copy(char_data, small, keep_documents=40)
    shutil.copytree(char_data, full)
    results = ablate.main([f'--data_dir={full}', f'--out_dir={tmp_path}/out', *TINY_GPT, '--eval_tokens=512',
                           '--what=data_size', f'--data_dirs={small},{full}', '--target_tokens=1000',
                           '--points=1', '--eval_documents=10'])
    assert [r['name'] for r in results] == ['genesis_40', 'genesis_all']
    assert [r['iters'] for r in results] == [4, 4]
    with open(tmp_path / 'out-ablate-data_size' / 'results.json') as f:
        assert json.load(f)['scored_on'] == small


def test_data_size_needs_prepared_directories_with_one_val_split(char_data, word_data, tmp_path):
    with pytest.raises(UserError, match=r'data/tinystories_20k is not prepared: the data-size ablation needs'
                                        r' .*run `python prepare.py data/tinystories_20k --max_docs=20000` first'):
        ablate.main(['--what=data_size'])
    with pytest.raises(UserError, match='hold different held-out documents or tokenizers'):
        ablate.main([f'--out_dir={tmp_path}/out', '--what=data_size', f'--data_dirs={char_data},{word_data}'])


@pytest.mark.parametrize('argv, message', [
    (['--what=depth'], 'must be windowing, data_size, dtype or tokenizer'),
    (['--what=tokenizer', '--tokenizers=char,bpe2x'], '--tokenizers: bpe2x: give char, word, bpe'),
    (['--time_budget=-1'], '--time_budget=-1.0 must be 0 or more'),
    (['--windowings=random,diagonal'], 'unknown diagonal; choose from random, sliding'),
    (['--points=0'], 'must be positive'),
])
def test_bad_options_are_one_line_errors(argv, message):
    with pytest.raises(UserError, match=message):
        ablate.main(argv)


def test_tokenizer_ablation_prepares_each_directory_and_gives_every_run_the_same_time(corpus_file, tmp_path):
    config_dir = str(tmp_path / 'genesis_char')  # the config's data: character level, block_size 32
    results = ablate.main([f'--data_dir={config_dir}', f'--out_dir={tmp_path}/out', *TINY_GPT, '--eval_tokens=512',
                           '--n_layer=1', '--what=tokenizer', '--tokenizers=char,bpe300', '--time_budget=2',
                           '--calibration_iters=4', '--points=1', f'--prepare_args=--input={corpus_file}'])
    char, bpe = results
    assert [r['name'] for r in results] == ['char', 'bpe300']
    metas = [storage.load_meta(str(tmp_path / name)) for name in ('genesis_char', 'genesis_bpe300')]
    assert [m['tokenizer']['kind'] for m in metas] == ['char', 'learned_bpe'] and metas[1]['vocab_size'] == 300
    assert metas[0]['splits']['val']['chars'] == metas[1]['splits']['val']['chars']  # the same held-out verses
    # the same context in characters: 32 characters of block, in fewer tokens of the BPE
    assert char['block_size'] == 32 and char['chars_per_token'] < 1.1
    assert bpe['chars_per_token'] > 1.5 and bpe['block_size'] == round(32 * char['chars_per_token'] /
                                                                       bpe['chars_per_token'])
    for r in results:  # max_iters fitted from the calibration, then trained to exactly that
        assert r['calibration']['iters'] == 4 and r['iters'] >= 1 and r['curve'][-1]['iter'] == r['iters']
        assert r['settings']['time_budget'] == 2 and 0 < r['val_bits_per_char'] < 8
    assert bpe['parameters'] > char['parameters']  # a 300-id embedding and output layer
    markdown = (tmp_path / 'out-ablate-tokenizer' / 'results.md').read_text()
    assert '| tokenizer | vocab | chars/token | block | parameters | tokens/s | iterations |' in markdown
