"""evaluate.py and what it measures: the exact scores against brute force, calibration, memorization, the
report card on disk, and its bad inputs."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

import evaluate
from conftest import run_script
from model import ModelArgs, build_model
from slm import batching, evaluation, fluency, memorization


def documents_of(lengths, vocab_size=20, seed=0):
    """Documents of random tokens 4 .. vocab_size - 1, each lengths[i] tokens long, end to end."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, vocab_size, size=sum(lengths)).astype(np.uint16)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return batching.Documents.from_split(tokens, offsets, {'bos': 1, 'eos': 2, 'pad': 3})


def tiny(model_type='gpt', block_size=8):
    torch.manual_seed(0)
    return build_model(ModelArgs(model_type=model_type, n_layer=1, n_head=2, n_embd=16, block_size=block_size,
                                 vocab_size=20)).eval()


def nats(model, x, y):
    """-log p of targets y after inputs x (two 1-D lists), read in one pass from the start."""
    logits = evaluation.logits_of(model, batching.Batch(torch.tensor([x]), torch.tensor([y])))[0]
    return -torch.log_softmax(logits.double(), -1)[range(len(y)), y]


@pytest.mark.parametrize('model_type', ['gpt', 'lstm'])
def test_chunked_score_equals_a_brute_force_loop(model_type):
    documents, T = documents_of([5, 8, 19, 2, 30]), 8
    model = tiny(model_type, T)
    total, count, columns = 0.0, 0, np.zeros(T, dtype=int)
    for a, b in zip(documents.starts, documents.ends):
        ids = documents.tokens[a:b].tolist()
        for c in range(0, len(ids) - 1, T):  # every chunk of T pairs from the document's start
            x, y = ids[c:c + T], ids[c + 1:c + T + 1]
            total, count = total + nats(model, x[:len(y)], y).sum().item(), count + len(y)
            columns[:len(y)] += 1
    score = evaluation.score(model, batching.evaluation_windows(documents, 3, T), 'cpu', evaluation.TEMPERATURES)
    assert score.targets == count == documents.pairs.sum()
    assert score.nats_per_target == pytest.approx(total / count, rel=1e-5)
    assert evaluation.held_out_loss(model, documents, 3, 'cpu') == pytest.approx(total / count, rel=1e-5)
    assert score.column_targets.tolist() == columns.tolist() == [10, 9, 8, 8, 7, 6, 6, 5]  # 4, 7, 18, 1, 29 pairs


def test_sliding_score_gives_every_target_its_context_once():
    documents, T, S = documents_of([30, 5, 17]), 8, 3
    model = tiny('gpt', T)
    expected = []
    for a, b in zip(documents.starts, documents.ends):
        ids = documents.tokens[a:b].tolist()
        for i in range(len(ids) - 1):  # pair i: its window starts at the first multiple of S that still holds it
            start = 0 if i < T else -(-(i - T + 1) // S) * S
            assert i - start >= min(i, T - S)  # at least T - S tokens of context where the document has them
            x, y = ids[start:i + 1], ids[start + 1:i + 2]
            expected.append(nats(model, x, y)[-1].item())
    score = evaluation.score(model, batching.sliding_windows(documents, 4, T, S), 'cpu')
    assert score.document_targets.tolist() == [29, 4, 16]
    assert score.nats_per_target == pytest.approx(np.mean(expected), rel=1e-5)
    chunked = evaluation.score(model, batching.evaluation_windows(documents, 4, T), 'cpu')
    assert chunked.nats_per_target != pytest.approx(score.nats_per_target, rel=1e-6)


class TrueSource(torch.nn.Module):
    """A 'model' whose next-token distribution is the source's own: log p at every position."""

    def __init__(self, p):
        super().__init__()
        self.args = ModelArgs(model_type='gpt', block_size=16, vocab_size=len(p))
        self.log_p = torch.nn.Parameter(torch.log(torch.tensor(p)), requires_grad=False)

    def forward(self, x, positions=None, doc_ids=None):
        return self.log_p.expand(*x.shape, -1)


def test_a_model_of_the_true_distribution_is_calibrated():
    p = np.array([0, 0, 0.001, 0.001, 0.6, 0.25, 0.1, 0.048])
    p = p / p.sum()
    rng = np.random.default_rng(0)
    tokens = rng.choice(len(p), size=40_000, p=p).astype(np.uint16)
    documents = batching.Documents.from_split(tokens, np.arange(0, 40_001, 400), {'bos': None, 'eos': None,
                                                                                   'pad': None})
    score = evaluation.score(TrueSource(p), batching.evaluation_windows(documents, 64, 16), 'cpu',
                             evaluation.TEMPERATURES)
    *_, ece = score.calibration_at(1.0)
    assert ece < 0.01
    assert score.best_temperature() == pytest.approx(1.0, abs=0.07)  # the grid's step: 6%
    entropy = -(p[p > 0] * np.log(p[p > 0])).sum()
    assert score.nats_per_target == pytest.approx(entropy, rel=0.02)
    wrong = TrueSource(p)
    wrong.log_p.data *= 2  # sharper than the truth: overconfident, fitted by dividing by about 2
    overconfident = evaluation.score(wrong, batching.evaluation_windows(documents, 64, 16), 'cpu',
                                     evaluation.TEMPERATURES)
    assert overconfident.calibration_at(1.0)[3] > 0.05
    assert overconfident.best_temperature() == pytest.approx(2.0, rel=0.07)
    sampled = evaluation.score(wrong, batching.evaluation_windows(documents, 64, 16), 'cpu',
                               evaluation.TEMPERATURES, calibration_targets=8192)  # every 5th of 40 batches
    assert 7 * 64 * 16 < sampled.temperature_targets <= 8 * 64 * 16  # 8 batches of at most 64 x 16 targets
    assert sampled.best_temperature() == overconfident.best_temperature()
    assert sampled.nats_per_target == overconfident.nats_per_target  # the loss still of every target
    assert sampled.calibration_at(1.0)[3] == pytest.approx(overconfident.calibration_at(1.0)[3])
    assert sampled.calibration[0, 0].sum() == sampled.temperature_targets  # temperature 0.5: of the sample


def test_bootstrap_interval_holds_the_score_and_narrows_with_documents():
    rng = np.random.default_rng(1)
    targets = rng.integers(10, 50, size=400).astype(float)
    loss = targets * rng.normal(2.0, 0.3, size=400)
    low, high = evaluation.bootstrap_interval(loss, targets, 500)
    assert low < loss.sum() / targets.sum() < high
    low_few, high_few = evaluation.bootstrap_interval(loss[:40], targets[:40], 500)
    assert high_few - low_few > 2 * (high - low)


def test_memorization_share_is_one_for_copies_and_the_baseline_for_held_out_text():
    rng = np.random.default_rng(0)
    train = rng.integers(97, 123, size=200_000)   # random letters: no n-gram of 32 repeats by chance
    held_out = rng.integers(97, 123, size=2_000)
    copies = [train[i:i + 300] for i in (0, 5_000, 199_700)]
    chunks = [train[i:i + 7_777] for i in range(0, len(train), 7_777)]  # n-grams across the cuts must be found
    stats = {}
    copied, fresh = memorization.shares_in_corpus([copies, [held_out]], chunks, (16, 32), stats)
    assert copied == {16: 1.0, 32: 1.0}
    assert fresh[32] == 0.0 and fresh[16] < 0.01
    assert stats['units_scanned'] == len(train)
    half = [np.concatenate([train[:100], held_out[:100]])]  # 100 copied units: 85 of 185 16-grams
    assert memorization.shares_in_corpus([half], chunks, (16,))[0][16] == pytest.approx(85 / 185, abs=0.01)
    assert memorization.shares_in_corpus([[train[:10]]], chunks, (16,))[0][16] is None  # shorter than n


def test_ngram_hashes_are_equal_for_equal_windows_only():
    units = memorization.text_units('abcabcabd')
    h = memorization.ngram_hashes(units, 3)
    assert len(h) == 7 and h[0] == h[3] and len(set(h.tolist())) == 4  # abc bca cab abc bca cab abd
    assert len(memorization.ngram_hashes(units, 10)) == 0


def test_fluency_proxies_on_hand_made_examples():
    result = fluency.text_fluency(['The cat sat. The cat ran!', 'A dog'], vocabulary={'the', 'cat', 'dog'})
    assert result['in_vocabulary'] == 5 / 8
    assert result['distinct_1'] == pytest.approx((4 / 6 + 1) / 2)
    assert result['distinct_2'] == pytest.approx((4 / 5 + 1) / 2)
    assert result['sentence_words'] == pytest.approx(8 / 3)
    scale = [60, 62, 64, 65, 67, 69, 71, 72]
    assert fluency.in_key(scale) == 1.0
    assert fluency.pitch_classes([scale])[[0, 2, 4, 5, 7, 9, 11]].sum() == 1.0
    assert fluency.jensen_shannon(fluency.pitch_classes([scale]), fluency.pitch_classes([scale])) == 0.0
    assert fluency.jensen_shannon(fluency.pitch_classes([scale]), fluency.pitch_classes([[61, 63]])) == 1.0


def test_report_card_on_disk(tiny_checkpoint, tmp_path):
    out_dir = str(tmp_path / 'run')
    shutil.copytree(tiny_checkpoint, out_dir)
    path, (card,) = evaluate.main([f'--out_dir={out_dir}', '--num_samples=3', '--sample_tokens=80',
                                   '--bootstrap=50', '--stride=8'])
    folder = os.path.join(out_dir, 'report')
    assert sorted(os.listdir(folder)) == ['calibration.png', 'loss_by_position.png', 'memorization.png',
                                          'report.json', 'report.md', 'samples.html']
    saved = json.load(open(os.path.join(folder, 'report.json')))['models'][0]
    h = saved['held_out']
    assert h['chunked']['bits_per_unit'] == pytest.approx(
        h['chunked']['nats_per_token'] / math.log(2) * h['targets'] / h['units'])
    assert h['chunked']['bits_per_unit_95'][0] < h['chunked']['bits_per_unit'] < h['chunked']['bits_per_unit_95'][1]
    assert h['stride'] == 8 and len(saved['by_position']['bits_per_token']) == card['model']['block_size']
    assert saved['memorization']['n'] == [16, 32, 64] and len(saved['samples']['texts']) == 3
    assert 'title="' in open(os.path.join(folder, 'samples.html')).read()
    report_md = open(path).read()
    assert '![Calibration](calibration.png)' in report_md and 'sliding (stride 8)' in report_md


def test_two_runs_side_by_side(tiny_checkpoint, bach_checkpoint, tmp_path):
    out_dir = str(tmp_path / 'run')
    shutil.copytree(tiny_checkpoint, out_dir)
    bach = bach_checkpoint[0]
    path, cards = evaluate.main([f'--out_dir={out_dir}', f'--compare={bach}', '--num_samples=2',
                                 '--sample_tokens=40', '--bootstrap=20'])
    assert path == os.path.join(out_dir, 'report-vs-bach', 'report.md')
    assert [c['model']['unit'] for c in cards] == ['char', 'note']
    assert set(cards[1]['fluency']['samples']) == {'pitch_class_distance', 'interval_distance', 'in_key'}
    assert '| difference |' in open(path).read()


def test_bad_inputs_get_one_line(tiny_checkpoint, char_data, tmp_path):
    for args, message in (([f'--out_dir={tmp_path}/none'], 'not found'),
                          ([f'--out_dir={tiny_checkpoint}', '--stride=0'], '--stride=0'),
                          ([f'--out_dir={tiny_checkpoint}', '--stride=999'], 'more than the model')):
        result = run_script('evaluate.py', *args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and 'Traceback' not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    # the data directory deleted: one line, exit 2, and the measures that need no data are written all the same
    data, out_dir = str(tmp_path / 'data'), str(tmp_path / 'run')
    shutil.copytree(char_data, data)
    shutil.copytree(tiny_checkpoint, out_dir)
    shutil.rmtree(data)
    result = run_script('evaluate.py', f'--out_dir={out_dir}', f'--data_dir={data}', '--num_samples=2',
                        '--sample_tokens=30')
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'prepare' in result.stderr and len(result.stderr.strip().splitlines()) == 1
    saved = json.load(open(os.path.join(out_dir, 'report', 'report.json')))['models'][0]
    assert 'held_out' not in saved and len(saved['samples']['texts']) == 2


def test_report_samples_of_a_model_trained_on_documents_kept_apart(tiny_checkpoint):
    """With new_document each sample goes on after its first end in a fresh document, and its bits are those of
    the first document, the context it was drawn in."""
    from slm import checkpoint, generation, report
    from slm import tokenizer as tok
    ckpt = checkpoint.load(os.path.join(tiny_checkpoint, 'ckpt.pt'))
    model, tokenizer = checkpoint.restore_model(ckpt).eval(), tok.from_meta(ckpt['tokenizer'])
    cfg = report.EvaluateConfig(num_samples=6, sample_tokens=80, seed=5)
    ends = (tok.EOS_ID, tok.BOS_ID)
    drawn = report.samples(model, tokenizer, cfg, 'cpu', new_document=ends)
    ids = torch.tensor([[tok.BOS_ID]] * 6)
    expected = torch.stack(list(generation.generate(model, ids, 80, temperature=cfg.temperature, top_k=cfg.top_k,
                                                    generator=torch.Generator().manual_seed(5),
                                                    new_document=ends)), dim=1)
    assert drawn['ids'] == torch.cat([ids, expected], dim=1).tolist()
    lengths = [row.index(tok.EOS_ID, 1) if tok.EOS_ID in row[1:] else model.args.block_size - 1
               for row in drawn['ids']]
    assert [len(bits) for bits in drawn['surprisal_bits']] == [min(n, model.args.block_size - 1) for n in lengths]
    assert any(n < model.args.block_size - 1 for n in lengths)  # some sample ended a verse inside the window
    assert [len(texts) for texts in drawn['token_texts']] == [len(bits) for bits in drawn['surprisal_bits']]
