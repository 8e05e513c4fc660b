"""A corpus becomes a prepared data directory: sources, tokenizing in bounded memory, the split files and meta.json
(prepare.py is its command line).

Every source becomes a `datasets.Dataset` per split with one text column (music: one column of note lists,
see read_pieces), and one writer turns those into files, in memory bounded by --batch_size documents whatever
the corpus size:

    Dataset (Arrow on disk) --Dataset.map(encode a batch, num_proc workers)--> one row per batch of documents:
        ids (the batch's token ids back to back, uint16)  lengths (tokens per document)  tokens  units
    sum(tokens) --> a .bin of that exact length, pre-allocated; each row is copied into its slice of it
"""
import dataclasses
import itertools
import os
import re
import shutil
import uuid

import numpy as np
from tqdm import tqdm

import configurator
from configurator import UNKNOWN, UserError, option, positional
from slm import music, reliability, storage
from slm import tokenizer as tok


HUB_NAMES = {'tinystories': 'roneneldan/TinyStories'}
DEFAULT_TOKENIZER = {'akjv': 'word', 'text': 'word', 'bach': 'midi', 'midi': 'midi'}  # else (datasets): bpe
MUSIC_SOURCES = ('bach', 'midi')
FILE_BUILDERS = {'.jsonl': 'json', '.json': 'json', '.parquet': 'parquet', '.txt': 'text', '.csv': 'csv'}
VAL_SPLIT_NAMES = ('validation', 'valid', 'val')


@dataclasses.dataclass
class PrepareConfig:
    data_dir: str = positional('data/akjv')  # output directory; its name can imply source and options
    source: str = ''             # akjv | text | tinystories | bach | midi | hub name | .jsonl/.parquet/.txt/.csv
    input: str = ''              # a text file, one document per line (source text), or a folder of .mid files
    text_column: str = 'text'    # dataset sources: the column that holds each document's text
    tokenizer: str = option('', choices=('', tok.TOKENIZERS), error=UNKNOWN)  # '' = word for akjv/text, midi
    #                              for music, else bpe (or the one the directory name gives)
    vocab_size: int = option(0, low=0)  # bpe: learn a byte-level BPE of this many ids from the training split
    #                              (0 = GPT-2's; a directory name such as data/akjv_bpe4k gives it too)
    bpe_learn_from: str = option('train', choices=('train', 'all'))  # learned bpe: all (val too) only to measure
    #                              what learning from the held-out text would leak
    booked: bool = False         # AKJV: prefix each verse with its book name ("Genesis: In the beginning ...")
    max_docs: int | None = option(None, low=1)  # keep only the first max_docs training documents (None = all);
    #                              val stays whole
    val_fraction: float = option(0.1, low=0, high=1, low_open=True, high_open=True)  # share of documents held
    #                              out for validation (sources with no validation split)
    seed: int = option(1337, low=0, high=2**32 - 1)  # seed of the document shuffle before that split
    num_proc: int = option(0, low=0)  # tokenizing processes (0 = one per CPU core)
    batch_size: int = option(1000, low=1)  # documents per tokenizing batch: memory grows with this, not the corpus
    max_vocab: int = option(0, low=0)  # word tokenizer: cap on the vocabulary size (0 = every distinct piece)
    min_count: int = option(1, low=1)  # word tokenizer: pieces seen fewer times are spelled with characters
    transpose: int = option(0, low=0, error='--transpose must be 0 or more, not {value}')  # music: train also
    #                              on each training piece moved by -N..N semitones (val as is)
    steps_per_quarter: int = option(4, low=1)  # music: time grid, steps per quarter note (4: sixteenth notes)


def tokenizer_named(part):
    """(tokenizer, vocab_size) that one part of a data directory's name data/<source>[_<part>...] gives: char, word,
    bpe (GPT-2's), midi; bpeN or bpeNk, a byte-level BPE of N or N x 1,024 ids learned from the corpus. None for
    any other part (booked, a size, ...)."""
    if part in tok.TOKENIZERS:
        return part, 0
    if m := re.fullmatch(r'bpe(\d+)(k?)', part):
        return 'bpe', int(m[1]) << (10 if m[2] else 0)
    return None


def with_tokenizer(data_dir, part):
    """data_dir with the tokenizer part of its name replaced by part (added where it has none)."""
    head, base = os.path.split(os.path.normpath(data_dir))
    return os.path.join(head, '_'.join([*(p for p in base.split('_') if not tokenizer_named(p)), part]))


def resolve(cfg):
    """Fill in source, tokenizer and booked from the directory name where they were not given; check values."""
    configurator.check(cfg)
    name_parts = os.path.basename(os.path.normpath(cfg.data_dir)).split('_')
    source = cfg.source or ('midi' if os.path.isdir(cfg.input) else 'text' if cfg.input else name_parts[0])
    if not cfg.source and source not in DEFAULT_TOKENIZER and source not in HUB_NAMES:
        raise UserError(f"unknown source {source!r} (from {cfg.data_dir}): use --source=akjv or tinystories,"
                        f" --source=HUB_NAME_OR_FILE, or --input=FILE for your own text")
    if source == 'text' and not cfg.input:
        raise UserError("source text needs --input=FILE (a UTF-8 text file, one document per line)")
    if source == 'midi' and not os.path.isdir(cfg.input):
        raise UserError(f"source midi needs --input=FOLDER, a folder of .mid files ({cfg.input or 'none'} given)")
    named = [t for part in name_parts[1:] if (t := tokenizer_named(part))]
    vocab_size = cfg.vocab_size or next((size for _, size in named if size), 0)
    tokenizer = cfg.tokenizer or next((kind for kind, size in named if not size), '') or \
        ('bpe' if vocab_size else DEFAULT_TOKENIZER.get(source, 'bpe'))
    if vocab_size and tokenizer not in ('bpe', 'learned_bpe'):
        raise UserError(f"--vocab_size={vocab_size} learns a byte-level BPE, not a {tokenizer} vocabulary: drop"
                        f" --tokenizer={tokenizer}, or --vocab_size (word tokenizer: --max_vocab caps its size)")
    if vocab_size or tokenizer == 'learned_bpe':
        if not vocab_size:
            raise UserError("--tokenizer=learned_bpe needs --vocab_size=N: how many ids to learn")
        tok.LearnedBPETokenizer.check_vocab_size(vocab_size)
        tokenizer = 'learned_bpe'
    if (source in MUSIC_SOURCES) != (tokenizer == 'midi'):
        raise UserError(f"--tokenizer={tokenizer} does not fit source {source}: music (data/bach, --input=FOLDER"
                        f" of .mid files) takes the midi tokenizer, text takes char, word or bpe")
    booked = cfg.booked or (source == 'akjv' and 'booked' in name_parts[1:])
    return dataclasses.replace(cfg, source=source, tokenizer=tokenizer, booked=booked, vocab_size=vocab_size)


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


def music_paths(cfg):
    """(paths of the source's pieces, where they come from)."""
    if cfg.source == 'bach':
        import music21
        return music.chorale_paths(), f'PyPI package music21 {music21.__version__}: Bach chorales from its corpus'
    paths = music.piece_paths(cfg.input)
    if not paths:
        raise UserError(f"{cfg.input} has no .mid or .midi files: give a folder of MIDI files")
    return paths, os.path.abspath(cfg.input)


def notes_batch(paths, steps_per_quarter, shifts):
    """A 'notes' row ([pitch, onset, duration] lists) per piece and shift; a file that cannot be read is skipped
    with a warning, a transposition that leaves the MIDI range is left out."""
    rows = []
    for path in paths:
        try:
            notes = music.read_piece(path, steps_per_quarter)
        except Exception as error:  # mido and music21 raise many types for a broken file: skip it, say why
            tqdm.write(f"warning: skipping {path}: {type(error).__name__}: {str(error)[:200]}")
            continue
        rows.extend(moved for shift in shifts if (moved := music.transpose(notes, shift)))
    return {'notes': [[list(note) for note in notes] for notes in rows]}


def read_pieces(paths, cfg, split):
    """A split of piece paths -> a Dataset of note lists, read in cfg.num_proc processes. The training split
    gets every piece moved by each of -transpose..+transpose semitones (0 included): the model hears each
    melody in several keys, while validation measures it on the pieces as written."""
    import datasets
    shifts = range(-cfg.transpose, cfg.transpose + 1) if split == 'train' else [0]
    num_proc = min(cfg.num_proc or cpu_count(), len(paths))
    features = datasets.Features({'notes': datasets.List(datasets.List(datasets.Value('int32')))})
    return paths.map(notes_batch, batched=True, batch_size=8, input_columns='path', remove_columns=['path'],
                     fn_kwargs={'steps_per_quarter': cfg.steps_per_quarter, 'shifts': shifts},
                     features=features, num_proc=num_proc if num_proc > 1 else None, desc=f'read {split}')


def load_dataset_source(source, text_column):
    """{split name: Dataset} of a hub dataset or local files, loaded by `datasets` (Arrow files on disk)."""
    import datasets
    source = os.path.expanduser(source)
    name = HUB_NAMES.get(source, source)
    is_path = os.path.exists(source) or source.startswith(('.', '/', '~')) or any(
        source.endswith(ext) or source.endswith(ext + '.gz') for ext in FILE_BUILDERS)
    if is_path and not os.path.exists(source):
        raise UserError(f"source {source} not found: give an existing file or directory, or a hub dataset name")
    if is_path and os.path.isfile(source) and os.path.getsize(source) == 0:
        raise UserError(f"source {source} is empty: give a file with one document per row")
    if is_path and os.path.isfile(source):
        ext = os.path.splitext(source[:-3] if source.endswith('.gz') else source)[1]
        if ext not in FILE_BUILDERS:
            raise UserError(f"source {source}: unknown file type {ext!r}; use {', '.join(FILE_BUILDERS)}")
        args, kwargs = (FILE_BUILDERS[ext],), {'data_files': source}
    else:  # a directory of data files, or a hub name
        args, kwargs = (name,), {}
    try:
        splits = dict(datasets.load_dataset(*args, **kwargs))
    except Exception as error:  # datasets raises many types (hub, network, file format): one line for all
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        hint = (" (no network? HF_DATASETS_OFFLINE=1 makes datasets use its cache)" if not is_path and
                not os.environ.get('HF_DATASETS_OFFLINE') else "")
        raise UserError(f"cannot load dataset {name!r}: {reason}{hint}")
    if not sum(map(len, splits.values())):
        raise UserError(f"source {source} has no documents")
    for split, dataset in splits.items():
        if text_column not in dataset.column_names:
            raise UserError(f"{name} split {split} has no column {text_column!r}; its columns are"
                            f" {', '.join(dataset.column_names)}: pass --text_column=NAME")
        kind = getattr(dataset.features[text_column], 'dtype', type(dataset.features[text_column]).__name__)
        if kind not in ('string', 'large_string'):
            raise UserError(f"column {text_column!r} of {name} holds {kind}, not text: pass --text_column=NAME"
                            f" of a text column ({', '.join(dataset.column_names)})")
    return splits


def split_dataset(dataset, val_fraction, seed):
    """Shuffle document indices with a fixed seed; the first val_fraction of them (at least one) is val."""
    if len(dataset) < 2:
        raise UserError(f"the corpus has {len(dataset)} document(s); a train/val split needs at least 2")
    order = np.random.default_rng(seed).permutation(len(dataset))
    n_val = min(len(dataset) - 1, max(1, round(len(dataset) * val_fraction)))
    return {'train': dataset.select(order[n_val:]), 'val': dataset.select(order[:n_val])}


def load_splits(cfg):
    """({'train': Dataset, 'val': Dataset}, origin): the source's documents, split, train cut to max_docs."""
    import datasets
    text_column = cfg.text_column
    if cfg.source in MUSIC_SOURCES:  # file paths, split like documents; each split's pieces are read below
        paths, origin = music_paths(cfg)
        text_column = 'path'
        found = {'train': datasets.Dataset.from_dict({text_column: paths})}
    elif cfg.source in DEFAULT_TOKENIZER:  # small corpora read into memory, then handled like every other source
        if cfg.source == 'akjv':
            documents, origin = akjv_documents(cfg.booked), 'PyPI package pythonbible-akjv (MIT)'
        else:
            documents, origin = text_documents(cfg.input), os.path.abspath(cfg.input)
        text_column = 'text'
        found = {'train': datasets.Dataset.from_dict({text_column: documents})}
    else:
        found = load_dataset_source(cfg.source, text_column)
        origin = HUB_NAMES.get(cfg.source, os.path.abspath(cfg.source) if os.path.exists(cfg.source)
                               else cfg.source)
    val_name = next((name for name in VAL_SPLIT_NAMES if name in found), None)
    if 'train' in found and val_name:
        splits = {'train': found['train'], 'val': found[val_name]}
    elif len(found) == 1:
        splits = split_dataset(next(iter(found.values())), cfg.val_fraction, cfg.seed)
    else:
        raise UserError(f"{cfg.source} has splits {', '.join(found)}: expected train and validation, or one split")
    if cfg.max_docs is not None:
        splits['train'] = splits['train'].select(range(min(cfg.max_docs, len(splits['train']))))
    splits = {split: ds.select_columns([text_column]) for split, ds in splits.items()}
    if cfg.source in MUSIC_SOURCES:
        splits = {split: read_pieces(ds, cfg, split) for split, ds in splits.items()}
    return splits, origin


def texts_of(splits, batch_size):
    """Every document's text, read batch by batch."""
    for dataset in splits.values():
        for batch in dataset.iter(batch_size=batch_size):
            yield from (text for text in next(iter(batch.values())) if text)


def build_tokenizer(cfg, splits):
    if cfg.tokenizer == 'learned_bpe':  # from the training split only, so that no validation text shapes it
        learned_from = splits if cfg.bpe_learn_from == 'all' else {'train': splits['train']}
        return tok.LearnedBPETokenizer.build(texts_of(learned_from, cfg.batch_size), cfg.vocab_size,
                                             total=sum(map(len, learned_from.values())))
    texts = texts_of(splits, cfg.batch_size)
    if cfg.tokenizer == 'midi':
        return tok.MidiTokenizer.build(steps_per_quarter=cfg.steps_per_quarter)
    if cfg.tokenizer == 'word':
        return tok.WordTokenizer.build(texts, max_vocab=cfg.max_vocab, min_count=cfg.min_count)
    return tok.TOKENIZERS[cfg.tokenizer].build(texts)


def encode_batch(texts, tokenizer, dtype):
    """One output row for a batch of documents (texts, or pieces as note lists); empty documents are skipped.

    units counts what the tokenizer's unit is: a text's characters plus one for the boundary its end token stands
    for, a piece's notes.
    """
    is_text = tokenizer.unit == 'char'
    texts = [text for text in texts if text and not (is_text and text.isspace())]
    documents = tokenizer.encode_lines(texts)
    lengths = np.fromiter(map(len, documents), dtype=np.int64, count=len(documents))
    ids = np.fromiter(itertools.chain.from_iterable(documents), dtype=dtype, count=int(lengths.sum()))
    return {'ids': [ids], 'lengths': [lengths], 'tokens': [len(ids)], 'documents': [len(texts)],
            'units': [sum(map(len, texts)) + (len(texts) if is_text else 0)]}


def cpu_count():
    """CPU cores this process may run on (Linux: its affinity mask; elsewhere every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def token_cache_dir():
    """A new directory for this run's tokenized Arrow files, in datasets' cache (where large files are expected),
    not in the data directory: datasets writes temporary files of its own beside them, which a killed run
    would leave behind. Directories of runs that were killed are removed first."""
    import datasets
    root = os.path.join(datasets.config.HF_DATASETS_CACHE, 'prepare-tokens')
    os.makedirs(root, exist_ok=True)
    storage.remove_stray_temporaries(root)
    path = storage.temporary_path(os.path.join(root, 'tokens'))
    os.makedirs(path)
    return path


def tokenize(dataset, tokenizer, dtype, cfg, cache_path, split):
    """Dataset.map of encode_batch over the split in cfg.num_proc processes; rows land in Arrow files on disk."""
    import datasets
    n_batches = -(-len(dataset) // cfg.batch_size)
    num_proc = min(cfg.num_proc or cpu_count(), n_batches)  # a worker needs a batch
    features = datasets.Features({'ids': datasets.List(datasets.Value(np.dtype(dtype).name)),
                                  'lengths': datasets.List(datasets.Value('int64')),
                                  **{key: datasets.Value('int64') for key in ('tokens', 'documents', 'units')}})
    return dataset.map(
        encode_batch, batched=True, batch_size=cfg.batch_size, input_columns=dataset.column_names,
        remove_columns=dataset.column_names, fn_kwargs={'tokenizer': tokenizer, 'dtype': dtype},
        features=features, num_proc=num_proc if num_proc > 1 else None, writer_batch_size=1,
        cache_file_name=cache_path, load_from_cache_file=False,
        new_fingerprint=uuid.uuid4().hex,  # the output is temporary: skip hashing the tokenizer for a cache key
        desc=f'tokenize {split}')


def token_batches(tokenized):
    """(ids, lengths) numpy arrays of each Arrow record batch of the tokenized split's files, in order.

    The files are read, not memory-mapped as datasets does, so the pages already copied do not stay in this
    process's resident memory: it holds one record batch at a time, whatever the corpus size.
    """
    import pyarrow as pa
    for cache_file in tokenized.cache_files:
        with pa.OSFile(cache_file['filename']) as f:
            for batch in pa.ipc.open_stream(f):
                yield batch.column('ids').flatten().to_numpy(), batch.column('lengths').flatten().to_numpy()


def split_counts(tokenized):
    """(tokens, documents, units) of a tokenized split."""
    return tuple(int(sum(tokenized[count])) for count in ('tokens', 'documents', 'units'))


def output_bytes(tokenized, dtype):
    """About how many bytes a tokenized split's .bin and .docs.npy take (the .npy header at most 4 KiB)."""
    n_tokens, n_documents, _ = split_counts(tokenized)
    return n_tokens * np.dtype(dtype).itemsize + (n_documents + 1) * 8 + 4096


def write_split(tokenized, bin_path, docs_path, dtype, split, unit):
    """Copy tokenized rows into a pre-allocated .bin and the document offsets into a .npy, both temporary
    files beside the final paths; return the split's counts (tokens, documents, and chars or notes: unit + 's')
    and {final path: temporary path}."""
    n_tokens, n_documents, units = split_counts(tokenized)
    if n_documents == 0:
        content = 'text' if unit == 'char' else f'{unit}s'
        raise UserError(f"the {split} split has no {content}: every document in it is empty or unreadable")
    itemsize = np.dtype(dtype).itemsize
    tmp_bin, tmp_docs = storage.temporary_path(bin_path), storage.temporary_path(docs_path)
    storage.allocate(tmp_bin, n_tokens * itemsize, f'the new {split} files')
    offsets = np.lib.format.open_memmap(tmp_docs, mode='w+', dtype=np.int64, shape=(n_documents + 1,))
    storage.allocate(tmp_docs, os.path.getsize(tmp_docs), f'the new {split} files')
    offsets[0] = 0
    position, document = 0, 0
    with tqdm(total=n_tokens, desc=f'write {split}', unit='tok', unit_scale=True) as progress:
        for ids, lengths in token_batches(tokenized):
            if len(ids):  # a window of the .bin mapped for this batch only, so memory never holds the whole file
                window = np.memmap(tmp_bin, dtype=dtype, mode='r+', offset=position * itemsize, shape=len(ids))
                window[:] = ids
                window.flush()
                del window
            offsets[document + 1:document + 1 + len(lengths)] = position + np.cumsum(lengths)
            position += len(ids)
            document += len(lengths)
            progress.update(len(ids))
    if (position, document) != (n_tokens, n_documents):
        raise RuntimeError(f"{split}: wrote {position} tokens in {document} documents,"
                           f" expected {n_tokens} in {n_documents}")
    offsets.flush()
    del offsets
    counts = {'tokens': int(n_tokens), 'documents': int(n_documents), unit + 's': int(units)}
    return counts, {bin_path: tmp_bin, docs_path: tmp_docs}


def prepare(cfg):
    """Run the whole preparation for a resolved config; return the meta dict written."""
    with reliability.children_die_with_parent():
        return _prepare(cfg)


def _prepare(cfg):
    splits, origin = load_splits(cfg)
    tokenizer = build_tokenizer(cfg, splits)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    os.makedirs(cfg.data_dir, exist_ok=True)
    storage.remove_stray_temporaries(cfg.data_dir)
    counts, written, cache_dir = {}, {}, token_cache_dir()
    try:
        tokenized = {split: tokenize(dataset, tokenizer, dtype, cfg, os.path.join(cache_dir, f'{split}.arrow'),
                                     split) for split, dataset in splits.items()}
        # the previous files stay until the new ones replace them: the new ones need room of their own
        storage.check_free_space(cfg.data_dir, sum(output_bytes(t, dtype) for t in tokenized.values()),
                                 f"the new {' and '.join(f'{split}.bin' for split in tokenized)}")
        for split in splits:
            counts[split], files = write_split(tokenized[split], *storage.split_paths(cfg.data_dir, split), dtype,
                                               split, tokenizer.unit)
            written.update(files)
        meta = {'format': 1, 'source': cfg.source, 'origin': origin, 'options': dataclasses.asdict(cfg),
                'tokenizer': tokenizer.to_meta(), 'vocab_size': tokenizer.vocab_size,
                'dtype': np.dtype(dtype).name, 'splits': counts}
        storage.publish_dataset(cfg.data_dir, meta, written)
    finally:  # whatever happened, no temporary of this process stays: token caches, unpublished files
        with reliability.signals_held():
            shutil.rmtree(cache_dir, ignore_errors=True)
            mine = f'.tmp-{os.getpid()}'
            for name in os.listdir(cfg.data_dir):
                if name.startswith('.') and name.endswith(mine):
                    os.remove(os.path.join(cfg.data_dir, name))
    return meta


def prepare_dir(cfg):
    """prepare, as a command does it: Ctrl-C or SIGTERM ends it in one line, its temporaries removed and the
    previous data kept (from the main thread: it installs the signal handlers)."""
    with reliability.stop_on_signals(cfg.data_dir):
        return prepare(cfg)
