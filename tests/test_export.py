"""export.py and hf.py: what transformers loads from an export computes what our GPT computes (logits within
1e-5, greedy generation token for token), the tokenizers encode as ours, and what has no standard equivalent
is refused in one line. Tiny models with random weights, on the CPU; nothing is downloaded."""
import dataclasses
import os
import subprocess
import sys
import types

import pytest
import torch
import transformers

import configurator
from configurator import UserError
from conftest import ROOT, metrics, run_script
import export
import model as model_module
from slm import checkpoint, generation, hf, storage
from slm import tokenizer as tok
from slm import training
import train


CHAR_META = tok.CharTokenizer.build(["In the beginning God created the heaven and the earth.\nÆon ☃ é"]).to_meta()
RECIPES = {  # every combination the project trains, and the other exportable ones
    'gpt2': dict(),
    'default': dict(rope=True),  # train.py's default recipe (Muon changes the training, not the model)
    'gpt2_bias_untied_tanh': dict(bias=True, tie_head=False, mlp='gelu_tanh'),
    'gpt2_relu2': dict(mlp='relu2', tie_head=False),
    'neox_relu2_untied': dict(rope=True, mlp='relu2', zero_init_proj=True, tie_head=False),
    'neox_gelu_bias': dict(rope=True, bias=True),
    'modern': dict(rope=True, norm='rmsnorm', qk_norm=True, mlp='swiglu', zero_init_proj=True, tie_head=False),
    'llama': dict(rope=True, norm='rmsnorm', mlp='swiglu', bias=True),
    'qwen3_tied': dict(rope=True, norm='rmsnorm', qk_norm=True, mlp='swiglu'),
}
EXPECTED = {'gpt2': 'GPT2LMHeadModel', 'default': 'GPTNeoXForCausalLM', 'gpt2_bias_untied_tanh': 'GPT2LMHeadModel', 'modern': 'Qwen3ForCausalLM',
            'gpt2_relu2': 'GPT2LMHeadModel', 'neox_relu2_untied': 'GPTNeoXForCausalLM',
            'neox_gelu_bias': 'GPTNeoXForCausalLM',
            'llama': 'LlamaForCausalLM', 'qwen3_tied': 'Qwen3ForCausalLM'}


def random_checkpoint(path, meta=CHAR_META, **recipe):
    """A checkpoint file of a tiny GPT whose every weight (gains and biases too) is random, not its init."""
    args = model_module.ModelArgs(vocab_size=tok.from_meta(meta).vocab_size, block_size=64, n_layer=2, n_embd=32,
                                  n_head=4, **{**model_module.gpt2_recipe(), **recipe})
    torch.manual_seed(0)
    gpt = model_module.build_model(args)
    with torch.no_grad():
        for name, weight in gpt.named_parameters():  # matrices, gains around 1, biases around 0
            weight.copy_(torch.randn_like(weight) * (0.3 if weight.dim() > 1 else 0.2) + name.endswith('norm.weight')
                         + name.endswith(('ln_1.weight', 'ln_2.weight', 'ln_f.weight')))
    checkpoint.save(path, {'model_args': dataclasses.asdict(args), 'model': gpt.state_dict(), 'tokenizer': meta})
    return gpt.eval()


@pytest.fixture(scope='module', params=sorted(RECIPES))
def exported(request, tmp_path_factory):
    """(our GPT, the transformers model loaded from its export) for one recipe."""
    tmp = tmp_path_factory.mktemp(request.param)
    ours = random_checkpoint(str(tmp / 'ckpt.pt'), **RECIPES[request.param])
    export.main([f'--checkpoint={tmp / "ckpt.pt"}', f'--to={tmp / "hf"}'])
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(tmp / 'hf'), trust_remote_code=False).eval()
    return request.param, ours, theirs, str(tmp / 'hf')


def test_the_exported_model_computes_our_logits(exported):
    name, ours, theirs, directory = exported
    assert type(theirs).__name__ == EXPECTED[name]
    assert os.path.exists(os.path.join(directory, 'model.safetensors'))
    ids = torch.randint(0, ours.args.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = ours(ids), theirs(ids).logits
    assert expected.abs().max() > 1  # random weights: logits far from uniform, so the comparison means something
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_greedy_generation_agrees_for_50_tokens(exported):
    _, ours, theirs, _ = exported
    prompt = torch.tensor([[1, 10, 11, 12, 13]])
    with torch.no_grad():
        mine = torch.stack(list(generation.generate(ours, prompt, 50, temperature=0)), dim=1)
        theirs.generation_config.eos_token_id = None  # ours does not stop at </s> either (no --stop_at_eos)
        hers = theirs.generate(prompt, do_sample=False, max_new_tokens=50, attention_mask=torch.ones_like(prompt))
    assert hers.shape[1] == prompt.shape[1] + 50
    assert hers[0, prompt.shape[1]:].tolist() == mine[0].tolist()
    assert len(set(mine[0].tolist())) > 1  # not one token repeated: a trivial agreement


def test_a_tied_head_is_stored_once(exported):
    name, ours, theirs, directory = exported
    from safetensors import safe_open
    with safe_open(os.path.join(directory, 'model.safetensors'), 'pt') as f:
        head = 'embed_out.weight' if EXPECTED[name] == 'GPTNeoXForCausalLM' else 'lm_head.weight'
        has_head = head in f.keys()
    assert has_head == (not ours.args.tie_head)
    assert (theirs.get_output_embeddings().weight.data_ptr() ==
            theirs.get_input_embeddings().weight.data_ptr()) == ours.args.tie_head


TEXTS = ["In the beginning God created the heaven and the earth.", "  spaces\tand\ttabs\n\nnew lines\r\n",
         "Unicode: Æon, naïve café, ☃, 日本語, emoji 🙂, ﬁ", "numbers 1234567 and 3.14, punctuation!?... 'quoted' don't",
         "", "x", "I'll  you've   we're\n", "\u00a0nbsp and \u200bzero width"]


def check_same_ids(meta, directory, texts=TEXTS):
    ours = tok.from_meta(meta)
    theirs = transformers.AutoTokenizer.from_pretrained(directory)
    for text in texts:
        assert theirs(text, add_special_tokens=False)['input_ids'] == ours.encode(text), text
        ids = ours.encode(text)
        assert theirs.decode(ids) == ours.decode(ids)
    start = [ours.bos_id] if ours.bos_id != ours.eos_id else []  # GPT-2's BPE adds nothing, as transformers' GPT-2
    assert theirs(TEXTS[0])['input_ids'] == start + ours.encode(TEXTS[0])
    return theirs


def write(meta, directory):
    os.makedirs(directory, exist_ok=True)
    return hf.write_tokenizer(meta, directory)


def test_gpt2_bpe_tokenizer_encodes_as_ours(tmp_path, gpt2_vocab, stories):
    meta = tok.BPETokenizer().to_meta()
    assert 'exported' in write(meta, str(tmp_path))
    theirs = check_same_ids(meta, str(tmp_path), TEXTS + stories[:10])
    assert theirs.eos_token_id == theirs.bos_token_id == 50256


def test_learned_bpe_tokenizer_encodes_as_ours(tmp_path, learned_data, verses, stories):
    meta = tok.from_meta(storage.load_meta(learned_data)['tokenizer']).to_meta()
    assert 'exported' in write(meta, str(tmp_path))
    theirs = check_same_ids(meta, str(tmp_path), TEXTS + verses[:20] + stories[:5])
    assert [theirs.convert_ids_to_tokens(i) for i in range(4)] == list(tok.SPECIALS)
    assert len(tok.from_meta(meta).encode(' '.join(verses[:20]))) < len(' '.join(verses[:20])) / 2  # merges used


def test_char_tokenizer_encodes_as_ours_unknown_characters_included(tmp_path):
    assert 'exported' in write(CHAR_META, str(tmp_path))
    check_same_ids(CHAR_META, str(tmp_path), TEXTS)  # most of TEXTS' characters are unknown: <?>


def test_word_and_midi_tokenizers_are_not_exported_and_say_so(tmp_path, word_data):
    meta = storage.load_meta(word_data)['tokenizer']
    line = write(meta, str(tmp_path))
    assert line.startswith('tokenizer not exported: the word tokenizer') and 'the model is' in line
    assert os.listdir(tmp_path) == []
    assert 'music' in write(tok.MidiTokenizer().to_meta(), str(tmp_path))


# ---------------------------------------------------------------------------------------------------------
# what export.py refuses

def refused(*args):
    result = run_script('export.py', *args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and 'Traceback' not in result.stderr
    return result.stderr


@pytest.mark.parametrize('recipe, says', [
    (dict(mlp='swiglu'), 'no standard transformers architecture that export knows expresses that combination'),
    (dict(rope=True, qk_norm=True), 'rope=True, norm=layernorm, mlp=gelu, qk_norm=True'),
    (dict(norm='rmsnorm'), 'norm=rmsnorm'),
    (dict(rope=True, norm='rmsnorm', qk_norm=True, mlp='swiglu', bias=True), 'bias=True'),
])
def test_combinations_without_a_standard_architecture_are_refused(tmp_path, recipe, says):
    random_checkpoint(str(tmp_path / 'ckpt.pt'), **recipe)
    stderr = refused(f'--checkpoint={tmp_path / "ckpt.pt"}', f'--to={tmp_path / "hf"}')
    assert says in stderr and 'export supports' in stderr
    assert not os.path.exists(tmp_path / 'hf')


def test_an_lstm_checkpoint_is_refused(tmp_path):
    args = model_module.ModelArgs(model_type='lstm', vocab_size=tok.from_meta(CHAR_META).vocab_size, n_embd=16)
    checkpoint.save(str(tmp_path / 'ckpt.pt'), {'model_args': dataclasses.asdict(args),
                                                'model': model_module.build_model(args).state_dict(),
                                                'tokenizer': CHAR_META})
    assert 'the lstm model: no standard transformers architecture' in refused(
        f'--out_dir={tmp_path}', f'--to={tmp_path / "hf"}')


def test_a_destination_that_is_a_file_or_not_empty_is_refused(tmp_path):
    random_checkpoint(str(tmp_path / 'ckpt.pt'))
    (tmp_path / 'file').write_text('x')
    assert 'is a file' in refused(f'--out_dir={tmp_path}', f'--to={tmp_path / "file"}')
    assert 'is not empty' in refused(f'--out_dir={tmp_path}', f'--to={tmp_path}')
    assert 'give the directory' in refused(f'--out_dir={tmp_path}')


def test_prepare_train_and_sample_do_not_import_transformers():
    code = ("import sys; import prepare, train, sample; "
            "print([m for m in ('transformers', 'safetensors', 'tokenizers', 'hf') if m in sys.modules])")
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == '[]'


# ---------------------------------------------------------------------------------------------------------
# train.py --init_from=DIR

class HFAsOurs(torch.nn.Module):
    """A transformers causal LM behind our GPT's forward, for train.py's evaluation."""
    args = model_module.ModelArgs()

    def __init__(self, hf_model):
        super().__init__()
        self.hf_model = hf_model

    def forward(self, idx, positions=None, doc_ids=None):
        assert positions is None and doc_ids is None  # random windows: one document's positions from 0
        return self.hf_model(idx).logits


@pytest.fixture(scope='module')
def gpt2_directory(tmp_path_factory):
    """A tiny randomly initialised GPT2LMHeadModel with GPT-2's vocabulary and activation, saved as
    transformers saves one."""
    config = transformers.GPT2Config(vocab_size=50257, n_positions=32, n_embd=8, n_layer=1, n_head=2,
                                     activation_function='gelu_new')
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, weight in gpt2.named_parameters():
            if weight.dim() == 1:  # gains and biases of their own, not 1 and 0
                weight.add_(torch.randn_like(weight) * 0.2)
            else:
                weight.normal_(0, 0.3)
    directory = str(tmp_path_factory.mktemp('gpt2'))
    gpt2.save_pretrained(directory)
    return directory


FINETUNE = ['--max_iters=0', '--block_size=16', '--batch_size=4', '--eval_tokens=256', '--device=cpu',
            '--dtype=float32', '--n_layer=3', '--n_embd=64']  # the shape options are the directory's, not these


def test_init_from_a_gpt2_directory_starts_at_transformers_loss(tmp_path, gpt2_directory, bpe_data):
    args = [f'--data_dir={bpe_data}', f'--out_dir={tmp_path / "out"}', f'--init_from={gpt2_directory}', *FINETUNE]
    train.main(args)
    first = metrics(str(tmp_path / 'out'))[0]
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(gpt2_directory).eval()
    cfg = configurator.parse(training.TrainConfig, args)
    meta = storage.load_meta(bpe_data)
    with torch.no_grad():
        expected = training.evaluate(HFAsOurs(hf_model), training.open_documents(bpe_data, 'val', meta), cfg, 'cpu',
                                  torch.float32)
    assert first['iter'] == 0 and first['val_loss'] == pytest.approx(expected, abs=1e-5)
    assert abs(expected - 10.825) > 0.1  # not the uniform loss ln(50257) a model that predicts nothing has
    saved = checkpoint.load(str(tmp_path / 'out' / 'ckpt.pt'))
    assert {k: saved['model_args'][k] for k in ('n_layer', 'n_embd', 'block_size', 'mlp', 'bias')} == dict(
        n_layer=1, n_embd=8, block_size=16, mlp='gelu_tanh', bias=True)


def train_refused(*args):
    result = run_script('train.py', *args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and 'Traceback' not in result.stderr
    return result.stderr


def test_init_from_refuses_another_vocabulary_another_architecture_and_no_directory(tmp_path, gpt2_directory,
                                                                                     char_data):
    stderr = train_refused(f'--data_dir={char_data}', f'--out_dir={tmp_path / "a"}', f'--init_from={gpt2_directory}',
                           *FINETUNE)
    assert 'has 50,257 token ids' in stderr and '--tokenizer=bpe' in stderr
    llama = tmp_path / 'llama'
    transformers.LlamaConfig(vocab_size=64, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                             num_attention_heads=2).save_pretrained(str(llama))
    assert 'holds a llama model' in train_refused(f'--data_dir={char_data}', f'--init_from={llama}', *FINETUNE)
    assert 'must be scratch, resume or a Hugging Face model directory' in train_refused(
        f'--data_dir={char_data}', f'--init_from={tmp_path / "nothing"}', *FINETUNE)
    assert 'longer than the 32 positions' in train_refused(
        f'--data_dir={char_data}', f'--init_from={gpt2_directory}', *FINETUNE, '--block_size=64')


def test_a_recipe_option_export_does_not_map_is_refused_when_it_is_not_gpt2s(monkeypatch):
    """A new recipe option (declared in model.py alone) exports while it has GPT-2's value, and is refused in one
    line naming it when it has another: hf never maps what it does not know."""
    real = model_module.gpt2_recipe()
    monkeypatch.setattr(model_module, 'gpt2_recipe', lambda: {**real, 'new_option': False})
    args = dataclasses.asdict(model_module.ModelArgs(**real))
    assert hf.architecture(types.SimpleNamespace(**args, new_option=False)) == 'gpt2'
    with pytest.raises(UserError, match=r'^this GPT \(--new_option=True\): no standard transformers architecture'):
        hf.architecture(types.SimpleNamespace(**args, new_option=True))


@pytest.mark.parametrize('option, value', [('x0_mix', True), ('value_embed', True), ('smear', True),
                                           ('bigram', True), ('ngram', 3), ('logit_softcap', 15.0)])
def test_the_speedrun_options_are_refused_by_export_in_one_line(option, value):
    """No transformers architecture export knows computes them: the refusal names the option."""
    args = model_module.ModelArgs(**{**model_module.gpt2_recipe(), option: value})
    with pytest.raises(UserError, match=rf'^this GPT \(--{option}={value}\): no standard transformers architecture'):
        hf.architecture(args)


def test_the_export_has_a_model_card_the_hub_reads(tmp_path, tiny_checkpoint):
    huggingface_hub = pytest.importorskip('huggingface_hub')
    export.main([f'--out_dir={tiny_checkpoint}', f'--to={tmp_path / "hf"}'])
    card = huggingface_hub.ModelCard.load(str(tmp_path / 'hf' / 'README.md'))
    assert card.data.library_name == 'transformers' and card.data.pipeline_tag == 'text-generation'
    assert card.data.license == 'unknown'  # trained on a text file: no licence to name
    ckpt = checkpoint.load(checkpoint.path_to_read(tiny_checkpoint))
    args = model_module.ModelArgs(**ckpt['model_args'])
    assert f"Validation loss {ckpt['val_loss']:.4f} nats per token" in card.text
    assert f"{args.n_layer} layers, {args.n_head} heads, width {args.n_embd}, context {args.block_size} tokens" \
        in card.text
    assert f"| `max_iters` | `{ckpt['config']['max_iters']}` |" in card.text
    assert "AutoTokenizer.from_pretrained('hf')" in card.text  # the char tokenizer is exported: it loads
