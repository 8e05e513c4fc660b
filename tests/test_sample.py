import dataclasses
import io
import os
import shutil

import pytest
import torch

from configurator import UserError
from conftest import TINY_GPT, run_script
import sample
from slm import checkpoint, generation, storage
from slm import tokenizer as tok
import train


def test_sample_in_a_fresh_process_needs_only_the_checkpoint(tiny_checkpoint, tmp_path):
    # the checkpoint alone, copied away from its data directory and training run
    lonely = tmp_path / 'lonely.pt'
    shutil.copy(os.path.join(tiny_checkpoint, 'ckpt.pt'), lonely)
    args = ['sample.py', f'--checkpoint={lonely}', '--start=And God', '--num_samples=2',
            '--max_new_tokens=30', '--device=cpu']
    first, again = run_script(*args, cwd=tmp_path), run_script(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    samples = first.stdout.split('-' * 40 + '\n')
    assert len(samples) == 3 and samples[2] == ''
    assert all(s.startswith('And God') and len(s) > len('And God') + 5 for s in samples[:2])
    assert first.stdout == again.stdout  # same seed, same samples


def test_lstm_samples_carry_hidden_state(char_data, tmp_path):
    from conftest import TINY_LSTM
    import train
    out_dir = str(tmp_path / 'lstm')
    train.main([f'--data_dir={char_data}', f'--out_dir={out_dir}', '--max_iters=10', '--eval_interval=10',
                *TINY_LSTM])
    texts = sample.sample(generation.SampleConfig(out_dir=out_dir, start='In', max_new_tokens=25, device='cpu'),
                          io.StringIO())
    assert texts[0].startswith('In') and len(texts[0]) >= 2 + 25 - 25 // 2  # </s> reads as one character


def test_generate_is_reproducible_and_respects_top_k(tiny_checkpoint):
    model = checkpoint.restore_model(checkpoint.load(os.path.join(tiny_checkpoint, 'ckpt.pt'))).eval()
    ids = torch.tensor([[tok.BOS_ID]])
    run = lambda seed, **kw: [t.item() for t in generation.generate(model, ids, 20, top_k=kw.get('top_k', 0),
                                                                generator=torch.Generator().manual_seed(seed))]
    assert run(1) == run(1) and run(1) != run(2)
    logits = model(ids)[0, -1]
    allowed = set(torch.topk(logits, 1).indices.tolist())
    assert set(run(5, top_k=1)[:1]) <= allowed  # top_k=1 is greedy


def test_unknown_prompt_characters_warn_once(tiny_checkpoint, capsys):
    cfg = generation.SampleConfig(out_dir=tiny_checkpoint, start='Zebra€€', max_new_tokens=5, device='cpu')
    sample.sample(cfg, io.StringIO())
    err = capsys.readouterr().err
    assert err.count('warning') == 1 and "'€'" in err


def test_prompt_from_file(tiny_checkpoint, tmp_path):
    prompt = tmp_path / 'prompt.txt'
    prompt.write_text('And the earth', encoding='utf-8')
    cfg = generation.SampleConfig(out_dir=tiny_checkpoint, start=f'FILE:{prompt}', max_new_tokens=5, device='cpu')
    assert sample.sample(cfg, io.StringIO())[0].startswith('And the earth')


@pytest.mark.parametrize('content, message', [
    (None, 'not found'),
    (b'hello', 'not a readable checkpoint'),
    (b'', 'not a readable checkpoint'),
])
def test_bad_checkpoint_is_a_user_error(tmp_path, content, message):
    path = tmp_path / 'ckpt.pt'
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        sample.sample(generation.SampleConfig(checkpoint=str(path)), io.StringIO())


def test_truncated_and_foreign_checkpoints(tiny_checkpoint, tmp_path):
    data = open(os.path.join(tiny_checkpoint, 'ckpt.pt'), 'rb').read()
    (tmp_path / 'cut.pt').write_bytes(data[:len(data) // 2])
    torch.save({'weights': torch.zeros(3)}, tmp_path / 'foreign.pt')
    ckpt = torch.load(os.path.join(tiny_checkpoint, 'ckpt.pt'), weights_only=True)
    checkpoint.save(tmp_path / 'mamba.pt', dict(ckpt, model_args=dict(ckpt['model_args'], model_type='mamba')))
    for name, message in [('cut.pt', 'not a readable checkpoint'), ('foreign.pt', 'not a checkpoint of this'),
                          ('mamba.pt', "unknown model type 'mamba'")]:
        with pytest.raises(UserError, match=message):
            sample.sample(generation.SampleConfig(checkpoint=str(tmp_path / name)), io.StringIO())


def test_bad_sampling_options(tiny_checkpoint):
    with pytest.raises(UserError, match='temperature'):
        sample.sample(generation.SampleConfig(out_dir=tiny_checkpoint, temperature=-1), io.StringIO())


class Writes(io.StringIO):
    """A text stream that remembers every piece written to it."""

    def __init__(self):
        super().__init__()
        self.pieces = []

    def write(self, text):
        self.pieces.append(text)
        return super().write(text)


def scripted(ids):
    """A stand-in for generation.generate that yields fixed ids, whatever the model would have drawn."""
    return lambda model, prompt, *args, **kwargs: (torch.full((len(prompt),), i) for i in ids)


def test_bpe_samples_stream_only_whole_characters(bpe_checkpoint, monkeypatch):
    bpe = tok.BPETokenizer()
    text = ' a dragon 🐉 said “héllo” to Zoë'
    ids = bpe.encode(text)
    assert any(bpe.decode(ids[:i]).endswith('\ufffd') for i in range(len(ids)))  # some tokens cut a character
    monkeypatch.setattr(generation, 'generate', scripted(ids))
    out = Writes()
    cfg = generation.SampleConfig(out_dir=bpe_checkpoint, start='Once', max_new_tokens=len(ids), device='cpu')
    assert sample.sample(cfg, out) == ['Once' + text]
    assert out.getvalue() == 'Once' + text + '\n' + '-' * 40 + '\n'
    assert not any('\ufffd' in piece for piece in out.pieces) and len(out.pieces) > 5  # streamed, never cut


def test_bpe_stop_at_eos_ends_the_story(bpe_checkpoint, monkeypatch):
    bpe = tok.BPETokenizer()
    monkeypatch.setattr(generation, 'generate', scripted(bpe.encode(' The end.') + [50256] + bpe.encode('Once')))
    cfg = generation.SampleConfig(out_dir=bpe_checkpoint, start='Hi!', max_new_tokens=5, device='cpu')
    assert sample.sample(cfg, io.StringIO()) == ['Hi! The end.<|endoftext|>Once']
    cfg = dataclasses.replace(cfg, stop_at_eos=True)
    assert sample.sample(cfg, io.StringIO()) == ['Hi! The end.']


def test_bpe_prompt_starts_after_end_of_text_and_never_warns(bpe_checkpoint, capsys):
    bpe = tok.BPETokenizer()
    assert generation.prompt_ids(bpe, 'Hi!') == [50256, 17250, 0]  # id 0 is '!', not an unknown token
    assert capsys.readouterr().err == ''


def test_bpe_sample_in_a_fresh_process(bpe_checkpoint, tmp_path):
    args = ['sample.py', f'--out_dir={bpe_checkpoint}', '--start=Once upon a time', '--max_new_tokens=20',
            '--device=cpu', '--top_k=50']
    result = run_script(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [story, rest] = result.stdout.split('\n' + '-' * 40 + '\n')
    assert story.startswith('Once upon a time') and len(story) > len('Once upon a time') + 20 and rest == ''


@pytest.mark.parametrize('model', ['tiny_checkpoint', 'bpe_checkpoint'])
def test_streaming_decodes_each_token_once(model, request, monkeypatch):
    """The work of streaming grows with the length, not its square: a spy counts the ids decode is given."""
    out_dir = request.getfixturevalue(model)
    tokenizer = tok.from_meta(checkpoint.load(os.path.join(out_dir, 'ckpt.pt'))['tokenizer'])
    ids = (tokenizer.encode(' a dragon 🐉 said “héllo” to Zoë.' if tokenizer.kind == 'bpe' else 'And God said')
           * 40)[:400]
    decoded, real_decode = [], type(tokenizer).decode
    monkeypatch.setattr(type(tokenizer), 'decode', lambda self, ids: decoded.append(len(ids)) or real_decode(
        self, ids))
    monkeypatch.setattr(generation, 'generate', scripted(ids))
    out = Writes()
    cfg = generation.SampleConfig(out_dir=out_dir, start='And', max_new_tokens=len(ids), device='cpu')
    [text] = sample.sample(cfg, out)
    assert out.getvalue() == text + generation.SEPARATOR and text == 'And' + real_decode(tokenizer, ids)
    assert len(out.pieces) == 1 + len(ids)  # the prompt, then one write per token
    assert sum(decoded) <= 2 * len(ids)  # the whole sample once at its end (and the prompt); not at every token


def test_learned_bpe_checkpoint_samples_with_its_data_directory_deleted(learned_data, tmp_path):
    data_dir, out_dir = str(tmp_path / 'genesis_bpe400'), str(tmp_path / 'out')
    shutil.copytree(learned_data, data_dir)
    train.main([f'--data_dir={data_dir}', f'--out_dir={out_dir}', '--max_iters=10', '--eval_interval=10',
                *TINY_GPT])
    shutil.rmtree(data_dir)
    path = os.path.join(out_dir, 'ckpt.pt')
    raw = torch.load(path, weights_only=True)  # the vocabulary is plain strings and ints
    assert raw['tokenizer'] == storage.load_meta(learned_data)['tokenizer'] and raw['model_args']['vocab_size'] == 400
    result = run_script('sample.py', f'--checkpoint={path}', '--start=And God', '--max_new_tokens=20',
                        '--device=cpu', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('And God') and len(result.stdout) > len('And God') + 10
    table = generation.probability_table(checkpoint.restore_model(raw).eval(), tok.from_meta(raw['tokenizer']),
                                     torch.tensor([[1]]), 400, generation.SampleConfig())
    assert any(' </s> ' in line for line in table)  # a special is labelled by its name
