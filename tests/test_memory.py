"""Big batches in bounded memory: micro-batches of rows give the whole batch's loss and gradients."""
import pytest
import torch

from configurator import UserError
from conftest import TINY_GPT, TINY_LSTM, has_compiler, metrics, without_timing
from model import ModelArgs, build_model
from slm import batching, evaluation, runtime, training
from slm.loss import BatchLoss, lm_loss, row_chunks
import train


B, T, V = 7, 12, 30


class SameBatch:
    """A batch source that yields one fixed batch (enough for BatchLoss)."""
    is_contiguous, is_epoch_start = True, False

    def __init__(self, batch):
        self.batch = batch

    def __next__(self):
        return self.batch


def make_batch(kind, generator):
    x, y = torch.randint(4, V, (B, T), generator=generator), torch.randint(4, V, (B, T), generator=generator)
    doc_ids = positions = None
    if kind in ('ignored', 'documents'):
        y[torch.rand(B, T, generator=generator) < 0.3] = batching.IGNORE_INDEX
        y[2] = batching.IGNORE_INDEX  # a row with no target at all: a chunk of it adds nothing
    if kind == 'documents':  # two documents in each row, the second starting at a different column per row
        cut = torch.randint(1, T, (B, 1), generator=generator)
        columns = torch.arange(T).expand(B, T)
        doc_ids = (columns >= cut).long()
        positions = torch.where(columns >= cut, columns - cut, columns)
    return batching.Batch(x, y, doc_ids, positions)


def loss_and_gradients(model, batch, hidden, rows_per_chunk, compiled=False):
    batch_loss = BatchLoss(model, SameBatch(batch), 'cpu', torch.float32, batching.IGNORE_INDEX, hidden,
                           rows_per_chunk, compiled=compiled)
    model.zero_grad(set_to_none=True)
    loss = batch_loss(lambda chunk_loss: chunk_loss.backward())
    return loss, {name: p.grad.clone() for name, p in model.named_parameters()}, batch_loss.hidden


@pytest.mark.parametrize('kind', ['plain', 'ignored', 'documents'])
@pytest.mark.parametrize('model_type', ['gpt', 'lstm'])
def test_micro_batches_give_the_whole_batch_loss_and_gradients(model_type, kind):
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model(ModelArgs(model_type=model_type, vocab_size=V, n_layer=2, n_head=2, n_embd=16,
                                  block_size=T))
    batch = make_batch(kind, generator)
    hidden = None
    if model_type == 'lstm':  # a state carried in from the previous batch, different in every row
        hidden = tuple(torch.randn(2, B, 16, generator=generator) for _ in range(2))
    whole, whole_grads, whole_hidden = loss_and_gradients(model, batch, hidden, rows_per_chunk=None)
    with torch.no_grad():
        expected = lm_loss(model(batch.x, hidden, positions=batch.positions)[0] if model_type == 'lstm' else
                                 model(batch.x, positions=batch.positions, doc_ids=batch.doc_ids),
                                 batch.y, batching.IGNORE_INDEX)
    assert whole.item() == pytest.approx(expected.item(), rel=1e-6)
    for rows in (1, 3, 6):
        loss, grads, new_hidden = loss_and_gradients(model, batch, hidden, rows_per_chunk=rows)
        assert loss.item() == pytest.approx(whole.item(), rel=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, whole_grads[name], rtol=1e-5, atol=1e-7, msg=name)
        if model_type == 'lstm':  # the rows' states carry on as they would have from the whole batch
            for h, h_whole in zip(new_hidden, whole_hidden):
                torch.testing.assert_close(h, h_whole, rtol=1e-5, atol=1e-7)
                assert not h.requires_grad


@pytest.mark.skipif(not has_compiler(), reason="torch.compile on the CPU needs a C++ compiler (c++)")
@pytest.mark.parametrize('model_type', ['gpt', 'lstm'])
def test_the_compiled_step_gives_the_eager_loss_and_gradients(model_type, capsys):
    """--compile: the model and its loss compiled, whole batches and micro-batches alike (their last chunk is
    smaller: another shape), give what the eager step gives, to float rounding."""
    torch.compiler.reset()  # no recompile limit reached by another test's shapes: this one compiles
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = build_model(ModelArgs(model_type=model_type, vocab_size=V, n_layer=2, n_head=2, n_embd=16,
                                  block_size=T))
    batch = make_batch('documents' if model_type == 'gpt' else 'ignored', generator)
    hidden = tuple(torch.randn(2, B, 16, generator=generator) for _ in range(2)) if model_type == 'lstm' else None
    for rows in (None, 3):
        eager, eager_grads, eager_hidden = loss_and_gradients(model, batch, hidden, rows)
        loss, grads, new_hidden = loss_and_gradients(model, batch, hidden, rows, compiled=True)
        assert loss.item() == pytest.approx(eager.item(), rel=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)
        if model_type == 'lstm':
            for h, h_eager in zip(new_hidden, eager_hidden):
                torch.testing.assert_close(h, h_eager, rtol=1e-5, atol=1e-6)
    assert 'warning: torch could not compile' not in capsys.readouterr().err  # compiled, not eager after all


def test_rows_per_chunk_splits_evenly_within_the_budget():
    assert runtime.rows_per_chunk(500, 10, None) == 500
    assert runtime.rows_per_chunk(500, 10, 5000) == 500    # fits exactly
    assert runtime.rows_per_chunk(500, 10, 1800) == 167    # 180 rows fit: 3 chunks of 167, 167, 166
    assert runtime.rows_per_chunk(500, 10, 5) == 1         # not even one row fits: one at a time
    assert [s.stop - s.start for s in row_chunks(500, 167)] == [167, 167, 166]


def test_max_memory_is_a_size():
    assert runtime.memory_budget('2GB', 'cpu') == 2 * 2**30
    assert runtime.memory_budget('1.5MB', 'cpu') == int(1.5 * 2**20)
    assert 0 < runtime.memory_budget('auto', 'cpu') <= runtime.CPU_MICRO_BATCH_BYTES
    for bad in ('lots', '2G', '-1GB', '0MB'):
        with pytest.raises(UserError, match=rf"--max_memory={bad} "):
            runtime.memory_budget(bad, 'cpu')


@pytest.mark.parametrize('model_args', [TINY_GPT, [*TINY_LSTM, '--windowing=packed']], ids=['gpt', 'lstm-packed'])
def test_a_run_in_micro_batches_is_the_run_of_whole_batches(char_data, tmp_path, capsys, model_args):
    common = [f'--data_dir={char_data}', *model_args, '--max_iters=10', '--eval_interval=5', '--log_interval=5']
    train.main([*common, f'--out_dir={tmp_path / "whole"}'])
    assert 'micro-batches' not in capsys.readouterr().out
    train.main([*common, f'--out_dir={tmp_path / "chunked"}', '--max_memory=100KB'])
    said = capsys.readouterr().out
    assert 'a batch of 8 rows needs about' in said and 'it runs in micro-batches of' in said
    whole, chunked = without_timing(metrics(tmp_path / 'whole')), without_timing(metrics(tmp_path / 'chunked'))
    assert [r['iter'] for r in whole] == [r['iter'] for r in chunked] and len(whole) == 5
    for a, b in zip(whole, chunked):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5) for k in a), (a, b)


def test_evaluation_is_sized_in_tokens_and_timed(char_data, tmp_path):
    cfg = training.TrainConfig(batch_size=8, block_size=32, eval_tokens=1000)
    assert evaluation.eval_batches(cfg) == 4    # 256 tokens a batch: whole batches covering 1,000 tokens
    assert evaluation.eval_batches(training.TrainConfig(batch_size=500, block_size=64, eval_tokens=1000)) == 1
    train.main([f'--data_dir={char_data}', f'--out_dir={tmp_path}', *TINY_GPT, '--max_iters=2',
                '--eval_interval=2'])
    evaluations = [r for r in metrics(tmp_path) if 'val_loss' in r]
    assert len(evaluations) == 2 and all(r['eval_s'] > 0 for r in evaluations)
