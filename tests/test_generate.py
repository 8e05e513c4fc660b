"""Generation in sample.py: the KV cache against recomputation, the windows past block_size, batching,
the sampling rules (greedy, top-k, nucleus), stopping, streaming, the probability table and --out."""
import io
import os

import pytest
import torch

from configurator import UserError
from conftest import greedy, reference, window_length
from model import GPT, LSTM, ModelArgs, gpt2_recipe
import sample
from slm import checkpoint, generation
from slm import tokenizer as tok


def confident_gpt(block_size=16, vocab_size=64):
    """A seeded GPT whose weights are scaled up: its greedy output varies with the context and its top two
    logits are far apart, so that a token-for-token comparison means something (a briefly trained tiny model
    greedily repeats its most frequent character)."""
    torch.manual_seed(0)
    model = GPT(ModelArgs(**gpt2_recipe(), vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2,
                          n_embd=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5.0)
    return model


def tiny_model(tiny_checkpoint):
    ckpt = checkpoint.load(os.path.join(tiny_checkpoint, 'ckpt.pt'))
    return checkpoint.restore_model(ckpt).eval(), tok.from_meta(ckpt['tokenizer'])


@pytest.mark.parametrize('context_shift, shift', [(0.25, 4), (0.0, 0), (0.5, 8), (0.99, 15)])
def test_greedy_with_the_cache_equals_recomputation_below_and_beyond_block_size(context_shift, shift):
    model = confident_gpt()  # block_size 16: 5 prompt tokens + 48 new cross it, and re-read, many times
    ids = torch.tensor([[1, 17, 33, 42, 8]])
    kw = dict(context_shift=context_shift)
    cached, recomputed = greedy(model, ids, 48, **kw), greedy(model, ids, 48, use_cache=False, **kw)
    assert cached.tolist() == recomputed.tolist()
    assert cached.tolist() == reference(model, ids, 48, shift)[:, 5:].tolist()
    assert len(set(cached[0].tolist())) >= 10  # not one token repeated
    if context_shift == 0:  # sliding by one is nanoGPT's sampler: always the last block_size tokens
        seq = ids
        for _ in range(48):
            seq = torch.cat([seq, model(seq[:, -16:])[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert cached.tolist() == seq[:, 5:].tolist()


def test_sampling_with_the_cache_equals_recomputation_on_a_trained_checkpoint(tiny_checkpoint):
    model, tokenizer = tiny_model(tiny_checkpoint)
    ids = torch.tensor([generation.prompt_ids(tokenizer, 'And God said')])
    draws = [list(generation.generate(model, ids, 90, temperature=1.0, use_cache=use_cache,
                                  generator=torch.Generator().manual_seed(7))) for use_cache in (True, False)]
    assert torch.equal(torch.stack(draws[0]), torch.stack(draws[1]))  # 13 + 90 tokens: past block_size 32


def test_the_windows_the_model_sees_past_block_size():
    model = confident_gpt(block_size=8)  # context_shift 0.25: s = 2, windows of 6, 7 and 8 tokens
    seen = []
    forward = model.forward
    model.forward = lambda idx, cache=None: (seen.append(idx.clone()), forward(idx, cache))[1]
    ids = torch.tensor([[1, 17, 33]])
    new = greedy(model, ids, 14, use_cache=False)
    sequence = torch.cat([ids, new], dim=1)
    assert [w.size(1) for w in seen] == [3, 4, 5, 6, 7, 8, 6, 7, 8, 6, 7, 8, 6, 7]
    for n, window in enumerate(seen, start=3):  # each window is the last W(n) of the n tokens so far
        assert torch.equal(window, sequence[:, n - window_length(n, 8, 2):n])
    seen.clear()
    assert torch.equal(greedy(model, ids, 14), new)
    # with the cache: the prompt once, then one token per pass, and the last 6 read again when the window is full
    assert [w.size(1) for w in seen] == [3, 1, 1, 1, 1, 1, 6, 1, 1, 6, 1, 1, 6, 1]


def test_a_batch_equals_its_rows_generated_one_by_one(tiny_checkpoint):
    gpt = confident_gpt()
    torch.manual_seed(1)
    lstm = LSTM(ModelArgs(model_type='lstm', vocab_size=64, n_layer=2, n_embd=32)).eval()
    with torch.no_grad():
        for p in lstm.parameters():
            p.mul_(8.0)
    prompts = torch.tensor([[1, 17, 33, 42], [1, 5, 5, 60], [1, 40, 2, 9]])
    for model in (gpt, lstm):
        batched = greedy(model, prompts, 40)
        one_by_one = torch.cat([greedy(model, row[None], 40) for row in prompts])
        assert batched.tolist() == one_by_one.tolist()
        assert len({tuple(row) for row in batched.tolist()}) == 3


@pytest.mark.parametrize('temperature, top_k, top_p, kept', [
    (1.0, 0, 0.3, {1}),            # sorted: 1 (0.4), 3 (0.3), 4 (0.15), 2 (0.1), 0 (0.05)
    (1.0, 0, 0.65, {1, 3}),        # 0.4 < 0.65 <= 0.7
    (1.0, 0, 0.75, {1, 3, 4}),
    (1.0, 0, 0.9, {1, 3, 4, 2}),
    (1.0, 0, 1.0, {0, 1, 2, 3, 4}),
    (1.0, 0, 1e-6, {1}),           # the most likely token is always kept
    (2.0, 0, 0.65, {1, 3, 4}),     # temperature first: at 2 the probabilities are 0.30, 0.26, 0.18, ...
    (1.0, 3, 0.6, {1, 3}),         # top_k first: 0.4/0.85 < 0.6 <= 0.7/0.85
    (0.0, 0, 1.0, {1}),            # greedy
])
def test_nucleus_keeps_exactly_the_tokens_that_reach_top_p(temperature, top_k, top_p, kept):
    first = torch.tensor([0.05, 0.4, 0.1, 0.3, 0.15])
    probs = torch.stack([first, first.flip(0)])  # each row is cut by its own order
    result = generation.sampling_probs(probs.log(), temperature, top_k, top_p)
    assert set(result[0].nonzero()[:, 0].tolist()) == kept
    assert set(result[1].nonzero()[:, 0].tolist()) == {4 - i for i in kept}
    assert torch.allclose(result.sum(-1), torch.ones(2))
    if temperature == 1.0 and not top_k:  # the kept tokens keep their ratios
        expected = probs[0] * torch.tensor([i in kept for i in range(5)])
        assert torch.allclose(result[0], expected / expected.sum())
    draws = generation.next_token(probs[:1].log().expand(400, 5), temperature, top_k, top_p,
                              torch.Generator().manual_seed(0))
    assert set(draws[:, 0].tolist()) == kept  # every kept token is drawn, no other


def test_probability_table(tiny_checkpoint):
    model, tokenizer = tiny_model(tiny_checkpoint)
    out = io.StringIO()
    cfg = generation.SampleConfig(out_dir=tiny_checkpoint, start='And God', show_probs=5, max_new_tokens=0,
                              device='cpu', top_k=3)
    assert sample.sample(cfg, out) == []
    with torch.no_grad():
        logits = model(torch.tensor([generation.prompt_ids(tokenizer, 'And God')]))[0, -1]
    log_probs = torch.log_softmax(logits, -1)
    top3 = torch.topk(logits, 3).indices
    drawn = torch.zeros_like(logits).index_put_((top3,), torch.softmax(logits[top3] / 0.8, -1))
    ranked = torch.argsort(log_probs, descending=True)[:5].tolist()
    labels = [repr(tokenizer.vocab[i]) if i >= len(tok.SPECIALS) else tok.SPECIALS[i] for i in ranked]
    width = max(5, *map(len, labels))
    expected = [f"next token: the 5 most likely of {tokenizer.vocab_size} (drawn: at temperature 0.8, top_k 3,"
                f" top_p 1)",
                f"rank  {'token'.ljust(width)}      id  probability  log-prob   drawn"]
    expected += [f"{rank:>4}  {label.ljust(width)}  {i:>6}  {log_probs[i].exp().item():>11.4f}"
                 f"  {log_probs[i].item():>8.4f}  {drawn[i].item():>6.4f}"
                 for rank, (i, label) in enumerate(zip(ranked, labels), 1)]
    assert out.getvalue() == '\n'.join(expected) + '\n\n'
    assert ranked[0] == tokenizer.ids[' ']  # what 40 steps of training learn first: the space
    assert [line.split()[-1] for line in expected[5:]] == ['0.0000', '0.0000']  # beyond top_k: never drawn


def test_stop_at_eos_and_batched_printing_in_order_of_completion(tiny_checkpoint):
    model, tokenizer = tiny_model(tiny_checkpoint)
    cfg = generation.SampleConfig(out_dir=tiny_checkpoint, start='And', num_samples=5, max_new_tokens=60,
                              temperature=1.0, stop_at_eos=True, seed=3, device='cpu')
    out = io.StringIO()
    samples = sample.sample(cfg, out)
    ids = torch.tensor([generation.prompt_ids(tokenizer, 'And')] * 5)
    drawn = torch.stack(list(generation.generate(model, ids, 60, temperature=1.0,
                                             generator=torch.Generator().manual_seed(3))), dim=1).tolist()
    ends = [row.index(tok.EOS_ID) if tok.EOS_ID in row else 60 for row in drawn]
    assert samples == ['And' + tokenizer.decode(row[:end]) for row, end in zip(drawn, ends)]
    assert len(set(ends)) >= 3 and min(ends) < 60  # some stopped early, at different tokens
    finished = sorted(range(5), key=lambda row: (ends[row], row))  # a row ends at its </s>, or at step 60
    assert out.getvalue() == ''.join(samples[row] + generation.SEPARATOR for row in finished)


def test_a_single_sample_streams_token_by_token_and_out_writes_the_samples(tiny_checkpoint, tmp_path):
    writes = []
    stream = type('Stream', (), {'write': lambda self, s: writes.append(s), 'flush': lambda self: None})()
    path = tmp_path / 'samples.txt'
    cfg = generation.SampleConfig(out_dir=tiny_checkpoint, start='And God', max_new_tokens=20, device='cpu',
                              out=str(path))
    [text] = sample.sample(cfg, stream)
    assert len(writes) == 1 + 20 and writes[0] == 'And God'  # the prompt, then one write per token
    assert ''.join(writes) == text + generation.SEPARATOR
    assert path.read_text(encoding='utf-8') == text + generation.SEPARATOR
    cfg.num_samples, cfg.out = 3, str(tmp_path / 'three.txt')
    texts = sample.sample(cfg, io.StringIO())
    assert (tmp_path / 'three.txt').read_text(encoding='utf-8') == ''.join(t + generation.SEPARATOR for t in texts)
    assert sorted(os.listdir(tmp_path)) == ['samples.txt', 'three.txt']  # no temporary file left behind


def test_the_cli_output_is_the_same_without_the_cache(tiny_checkpoint):
    cfg = generation.SampleConfig(out_dir=tiny_checkpoint, start='In the beginning', num_samples=2,
                              max_new_tokens=50, device='cpu')
    with_cache = sample.sample(cfg, io.StringIO())
    cfg.kv_cache = False
    assert sample.sample(cfg, io.StringIO()) == with_cache


def test_a_prompt_longer_than_block_size_is_cropped_with_a_warning(tiny_checkpoint, capsys):
    cfg = generation.SampleConfig(out_dir=tiny_checkpoint, start='And God said ' * 10, max_new_tokens=10,
                              device='cpu')
    [text] = sample.sample(cfg, io.StringIO())
    assert text.startswith(cfg.start) and len(text) == len(cfg.start) + 10
    assert capsys.readouterr().err == ("warning: the prompt is 131 tokens, more than block_size 32: the model"
                                       " sees its last 32\n")


def test_an_empty_prompt_needs_a_start_token():
    class NoStartToken(tok.CharTokenizer):
        bos_id = None
    tokenizer = NoStartToken.build(['ab'])
    with pytest.raises(UserError, match='the prompt is empty and this tokenizer has no start-of-document'):
        generation.prompt_ids(tokenizer, '')
    assert generation.prompt_ids(tokenizer, 'ba') == tokenizer.encode('ba')
    assert generation.prompt_ids(tok.CharTokenizer.build(['ab']), '') == [tok.BOS_ID]


@pytest.mark.parametrize('options, message', [
    (dict(temperature=-0.5), r'--temperature=-0.5 is negative: use 0 for greedy'),
    (dict(top_p=0.0), r'--top_p=0.0 must be in \(0, 1\]'),
    (dict(top_p=1.5), r'--top_p=1.5 must be in \(0, 1\]'),
    (dict(top_k=-1), r'--top_k and --show_probs must be 0'),
    (dict(context_shift=1.0), r'--context_shift=1.0 must be in \[0, 1\)'),
    (dict(num_samples=0), r'--num_samples and --max_new_tokens must be positive'),
    (dict(max_new_tokens=0), r'--max_new_tokens=0 only with --show_probs'),
    (dict(out='/nonexistent/dir/samples.txt'), r'its directory does not exist'),
    (dict(threads=-1), r'--threads=-1 must be 0'),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(UserError, match=message):
        sample.sample(generation.SampleConfig(checkpoint='/nonexistent.pt', **options))  # before any loading


def test_a_model_trained_on_documents_kept_apart_starts_a_fresh_one_after_an_end():
    """With new_document a row that draws the end id goes on as a fresh document, read from the start id alone,
    as a model trained on packed (or line) windows read every document; the other rows go on undisturbed."""
    torch.manual_seed(1)
    lstm = LSTM(ModelArgs(model_type='lstm', vocab_size=64, n_layer=2, n_embd=32)).eval()
    with torch.no_grad():
        for p in lstm.parameters():
            p.mul_(8.0)
    prompts = torch.tensor([[1, 17, 33, 42], [1, 5, 5, 60]])
    start, n = 1, 11  # 4 + 11 tokens: within the GPT's block_size of 16, so the reference reads whole contexts
    for model in (confident_gpt(), lstm):
        plain = greedy(model, prompts, n)
        i = next(i for i in range(2, n - 4) if plain[0, i] not in plain[0, :i])
        end = plain[0, i].item()  # a token row 0 draws first at i stands in for the end of a document
        expected = []
        for row in prompts.tolist():  # one token at a time from the whole context, which restarts at [start]
            seq, new = row, []
            for _ in range(n):
                new.append(greedy(model, torch.tensor([seq]), 1).item())
                seq = [start] if new[-1] == end else seq + [new[-1]]
            expected.append(new)
        kept_apart = greedy(model, prompts, n, new_document=(end, start))
        assert kept_apart.tolist() == expected
        assert kept_apart[0, :i + 1].tolist() == plain[0, :i + 1].tolist()  # the same up to the end, then
        assert kept_apart[0, i + 1:].tolist() != plain[0, i + 1:].tolist()  # another document
        assert kept_apart[0, i + 1].item() == greedy(model, torch.tensor([[start]]), 1).item()


def test_document_ends_names_the_models_trained_on_documents_kept_apart(tiny_checkpoint):
    ckpt = checkpoint.load(os.path.join(tiny_checkpoint, 'ckpt.pt'))
    tokenizer = tok.from_meta(ckpt['tokenizer'])
    gpt, lstm = ckpt['model_args'], {**ckpt['model_args'], 'model_type': 'lstm'}
    cases = [(gpt, 'random'), (gpt, 'auto'), (gpt, 'streams'), (lstm, 'auto'), (gpt, 'packed'), (lstm, 'packed'),
             (gpt, 'lines_full'), (gpt, 'lines_slide')]
    ends = [generation.document_ends({**ckpt, 'model_args': args, 'config': {**ckpt['config'], 'windowing': w}},
                                     tokenizer) for args, w in cases]
    assert ends == [None] * 4 + [(tok.EOS_ID, tok.BOS_ID)] * 4
    assert ckpt['config']['windowing'] == 'auto' and generation.document_ends(ckpt, tokenizer) is None
    assert generation.document_ends({**ckpt, 'config': {}}, tokenizer) is None  # a config from before windowings


def test_current_document_is_what_follows_the_last_end():
    assert generation.current_document([1, 5, 6, 2, 7, 8], (2, 1)) == [1, 7, 8]  # char/word/learned BPE
    assert generation.current_document([1, 5, 6, 2, 1, 7, 8], (2, 1)) == [1, 7, 8]  # with the start written out
    assert generation.current_document([1, 5, 6, 2, 7, 2, 9], (2, 1)) == [1, 9]
    assert generation.current_document([1, 5, 6], (2, 1)) == [1, 5, 6]
    assert generation.current_document([1, 5, 6, 2, 7], None) == [1, 5, 6, 2, 7]  # windows that run on
    eot = 50256  # GPT-2 BPE: the start is the end id; the one at 0 ends nothing
    assert generation.current_document([eot, 5, 6], (eot, eot)) == [eot, 5, 6]
    assert generation.current_document([eot, 5, eot, 7], (eot, eot)) == [eot, 7]
