import json
import os
import shutil

import numpy as np
import pytest

import ablate
from configurator import UserError
from conftest import TINY_GPT, metrics
from slm import evaluation, storage


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
        documents, chars = evaluation.held_out(char_data, 20)
        assert chars == written['chars']
        cfg = ablate.AblateConfig(data_dir=char_data, batch_size=8, device='cpu')
        loss, bits, _, iteration = ablate.score(str(directory / r['name']), documents, chars, cfg)
        assert (loss, bits, iteration) == (r['val_loss'], r['val_bits_per_char'], r['iters'])
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


def test_report_puts_the_best_run_beside_the_worst(windowing_run, capsys):
    args, results, directory = windowing_run
    ablate.main(args + ['--report=True'])  # the runs are done: only the report is new
    ranked = sorted(results, key=lambda r: r['val_bits_per_char'])
    best, worst = ranked[0], ranked[-1]
    folder = directory / best['name'] / f"report-vs-{worst['name']}"
    with open(folder / 'report.json') as f:
        cards = json.load(f)['models']
    assert [card['model']['out_dir'] for card in cards] == [str(directory / r['name']) for r in (best, worst)]
    for card, r in zip(cards, (best, worst)):  # each scored on the same 20 held-out verses as the ablation
        assert card['held_out']['documents'] == 20
        assert card['held_out']['chunked']['nats_per_token'] == pytest.approx(r['val_loss'], rel=1e-5)
    assert f"report-vs-{worst['name']}/report.md" in (directory / 'results.md').read_text()
    assert 'already done' in capsys.readouterr().out


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
    (['--what=depth'], 'must be windowing, data_size, dtype, tokenizer, recipe or sweep'),
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
                           '--n_layer=1', '--what=tokenizer', '--tokenizers=char,bpe300', '--time_budget=4',
                           '--points=2', f'--prepare_args=--input={corpus_file}'])
    char, bpe = results
    assert [r['name'] for r in results] == ['char', 'bpe300']
    metas = [storage.load_meta(str(tmp_path / name)) for name in ('genesis_char', 'genesis_bpe300')]
    assert [m['tokenizer']['kind'] for m in metas] == ['char', 'learned_bpe'] and metas[1]['vocab_size'] == 300
    assert metas[0]['splits']['val']['chars'] == metas[1]['splits']['val']['chars']  # the same held-out verses
    # the same context in characters: 32 characters of block, in fewer tokens of the BPE
    assert char['block_size'] == 32 and char['chars_per_token'] < 1.1
    assert bpe['chars_per_token'] > 1.5 and bpe['block_size'] == round(32 * char['chars_per_token'] /
                                                                       bpe['chars_per_token'])
    for r in results:  # train.py's --max_time=4s, paused at 2 s to be scored, then resumed to the end of its budget
        spent = metrics(str(tmp_path / 'out-ablate-tokenizer' / r['name']))[-1]
        assert spent['max_time_s'] == 4 and spent['iter'] == r['iters'] == r['curve'][-1]['iter']
        assert 0 < r['curve'][0]['iter'] < r['iters']
        assert spent['elapsed_s'] <= 4.5  # the budget, but for an evaluation slower than the one before it
        assert r['settings']['time_budget'] == 4 and 0 < r['val_bits_per_char'] < 8
    assert bpe['parameters'] > char['parameters']  # a 300-id embedding and output layer
    markdown = (tmp_path / 'out-ablate-tokenizer' / 'results.md').read_text()
    assert '| tokenizer | vocab | chars/token | block | parameters | tokens/s | iterations |' in markdown


def recipe_of(variant):
    return {k: variant.overrides[k] for k in GPT2}


GPT2 = {'rope': False, 'norm': 'layernorm', 'qk_norm': False, 'mlp': 'gelu', 'zero_init_proj': False,
        'tie_head': True, 'x0_mix': False, 'value_embed': False, 'smear': False, 'bigram': False, 'ngram': 0,
        'logit_softcap': 0.0, 'optimizer': 'adamw', 'lr_schedule': 'cosine'}


def test_a_max_time_from_a_config_leaves_the_token_budget_alone(char_data, tmp_path):
    """The config's --max_time is train.py's; an ablation gives its runs the same tokens, or --time_budget."""
    cfg = ablate.AblateConfig(data_dir=char_data, max_time='5min', ablation_dir=str(tmp_path), n_layer=1, n_head=2,
                              n_embd=32, block_size=32)
    (variant, *_) = ablate.variants(cfg)
    assert ablate.run_config(cfg, variant).max_time == ''


def test_recipe_ablation_adds_each_change_to_gpt2_alone():
    variant_list = ablate.variants(ablate.AblateConfig(what='recipe'))
    assert [v.name for v in variant_list] == ['gpt2', '+ rope', '+ rmsnorm', '+ qk_norm', '+ relu2', '+ swiglu',
                                              '+ zero_init_proj', '+ untied_head', '+ x0_mix', '+ value_embed',
                                              '+ smear', '+ bigram', '+ trigram', '+ softcap', '+ muon',
                                              '+ warmdown']
    assert recipe_of(variant_list[0]) == GPT2
    assert recipe_of(variant_list[2]) == {**GPT2, 'norm': 'rmsnorm'}
    assert recipe_of(variant_list[7]) == {**GPT2, 'tie_head': False}
    assert recipe_of(variant_list[12]) == {**GPT2, 'ngram': 3}
    assert recipe_of(variant_list[14]) == {**GPT2, 'optimizer': 'muon'}
    assert recipe_of(variant_list[13]) == {**GPT2, 'logit_softcap': 15.0}
    assert recipe_of(variant_list[15]) == {**GPT2, 'lr_schedule': 'warmdown'}
    assert [v.directory for v in variant_list][:2] == ['gpt2', 'add_rope']


def test_recipe_ablation_removes_each_change_from_the_base_and_swaps_the_mlp():
    # the base starts from GPT-2's recipe whatever the config says (here: already modern)
    cfg = ablate.AblateConfig(what='recipe', recipe_base='rope,swiglu,muon', recipe_changes='rope,relu2,muon,qk_norm',
                              rope=True, qk_norm=True, norm='rmsnorm')
    gpt2, base, no_rope, relu2, no_muon, qk_norm = ablate.variants(cfg)
    assert [gpt2.name, base.name, no_rope.name, relu2.name, no_muon.name, qk_norm.name] == [
        'gpt2', 'rope+swiglu+muon', '- rope', 'relu2 for swiglu', '- muon', '+ qk_norm']
    modern = {**GPT2, 'rope': True, 'mlp': 'swiglu', 'optimizer': 'muon'}
    assert recipe_of(gpt2) == GPT2 and recipe_of(base) == modern
    assert recipe_of(no_rope) == {**modern, 'rope': False}
    assert recipe_of(relu2) == {**modern, 'mlp': 'relu2'}
    assert recipe_of(no_muon) == {**modern, 'optimizer': 'adamw'}
    assert recipe_of(qk_norm) == {**modern, 'qk_norm': True}
    assert relu2.directory == 'relu2_for_swiglu' and no_muon.directory == 'drop_muon'


def test_sweep_gives_a_run_per_value_in_the_option_type():
    variant_list = ablate.variants(ablate.AblateConfig(what='sweep', sweep='learning_rate=1e-3,3e-3', seeds=2))
    assert [(v.name, v.overrides, v.directory) for v in variant_list] == [
        ('learning_rate=1e-3', {'learning_rate': 0.001, 'seed': 1337}, 'learning_rate=1e-3-seed1337'),
        ('learning_rate=1e-3', {'learning_rate': 0.001, 'seed': 1338}, 'learning_rate=1e-3-seed1338'),
        ('learning_rate=3e-3', {'learning_rate': 0.003, 'seed': 1337}, 'learning_rate=3e-3-seed1337'),
        ('learning_rate=3e-3', {'learning_rate': 0.003, 'seed': 1338}, 'learning_rate=3e-3-seed1338')]


@pytest.fixture(scope='module')
def seeds_run(tmp_path_factory, char_data):
    out = tmp_path_factory.mktemp('seeds')
    args = [f'--data_dir={char_data}', f'--out_dir={out}/out', *TINY_GPT, '--eval_tokens=512', '--what=recipe',
            '--recipe_changes=muon', '--seeds=2', '--target_tokens=2000', '--points=2', '--eval_documents=20']
    return args, out / 'out-ablate-recipe'


def test_seeds_run_in_parallel_as_they_run_one_after_another(seeds_run):
    args, directory = seeds_run
    in_turn = ablate.main(args)
    in_parallel = ablate.main([*args, f'--ablation_dir={directory}-parallel', '--jobs=2'])
    assert [(r['name'], r['seed']) for r in in_turn] == [('gpt2', 1337), ('gpt2', 1338), ('+ muon', 1337),
                                                         ('+ muon', 1338)]
    assert in_turn[0]['val_loss'] != in_turn[1]['val_loss']  # two seeds: two initial weights and batch orders
    for one, other in zip(in_turn, in_parallel):  # the same runs; bitwise alike up to the threads a process has
        assert (one['name'], one['seed'], one['iters']) == (other['name'], other['seed'], other['iters'])
        assert other['val_loss'] == pytest.approx(one['val_loss'], rel=1e-4)
    log = (directory.parent / 'out-ablate-recipe-parallel' / 'gpt2-seed1338.log').read_text()
    assert 'gpt2: iteration 4/8,' in log and 'gpt2: iteration 8/8,' in log  # the run's own output


def test_seeds_table_gives_each_variants_mean_and_spread(seeds_run):
    _, directory = seeds_run
    results = json.loads((directory / 'results.json').read_text())
    runs = results['results']
    gpt2 = [r['val_bits_per_char'] for r in runs if r['name'] == 'gpt2']
    muon = [r['val_bits_per_char'] for r in runs if r['name'] == '+ muon']
    first, second = results['variants']
    assert (first['name'], first['runs'], first['seeds']) == ('gpt2', 2, [1337, 1338])
    assert first['mean'] == pytest.approx(sum(gpt2) / 2) and second['mean'] == pytest.approx(sum(muon) / 2)
    assert first['std'] == pytest.approx(abs(gpt2[0] - gpt2[1]) / 2 ** 0.5)
    rows = [line for line in (directory / 'results.md').read_text().splitlines() if line.startswith('| `')]
    assert [row.split('`')[1] for row in rows] == ['gpt2', '+ muon']
    assert rows[1].endswith(f"| {second['mean'] - first['mean']:+.4f} |")
    assert f"{min(muon):.4f} - {max(muon):.4f}" in rows[1]
    assert (directory / 'ablation.png').stat().st_size > 5000
