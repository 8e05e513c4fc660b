"""Files on disk: atomic writes, and the layout of a prepared dataset that prepare.py writes and training reads.

A prepared data directory holds

    meta.json            tokenizer, dtype, counts, source, and each file's size and sha256
    train.bin, val.bin   token ids, one flat array per split (uint16, or uint32 for large vocabularies)
    train.docs.npy, ...  int64 document start offsets into the .bin, plus the total length at the end

meta.json is published last and removed first, so a directory has either a complete set of files that agree
with its meta, or no meta.json (never prepared, or a prepare interrupted before it finished). Opening the data
checks every file's size against meta.json, and its sha256 too when asked (train.py does by default).
"""
import contextlib
import errno
import hashlib
import json
import os
import shutil

import numpy as np
from tqdm import tqdm

from configurator import UserError


META = 'meta.json'
SPLITS = ('train', 'val')


@contextlib.contextmanager
def atomic_write(path, mode='wb'):
    """Open a temporary file beside path; on success flush, fsync and rename it over path, else delete it.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    tmp = temporary_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(tmp))
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def temporary_path(path):
    """Where a new version of path is written before it is renamed into place (same directory, hidden)."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f'.{name}.tmp-{os.getpid()}')


def remove_stray_temporaries(directory):
    """Delete temporary files (and directories) that an interrupted process left behind (it is gone)."""
    if not os.path.isdir(directory):
        return
    for name in os.listdir(directory):
        if name.startswith('.') and '.tmp-' in name:
            pid = name.rsplit('.tmp-', 1)[1]
            if not (pid.isdigit() and _process_alive(int(pid))):
                path = os.path.join(directory, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def split_paths(data_dir, split):
    """(tokens .bin path, document offsets .npy path) of one split."""
    return os.path.join(data_dir, f'{split}.bin'), os.path.join(data_dir, f'{split}.docs.npy')


def file_digest(path, name=None):
    """{'bytes': size, 'sha256': hex digest} of a file, read in 1 MiB pieces (a progress bar after a second)."""
    digest, size = hashlib.sha256(), os.path.getsize(path)
    with open(path, 'rb') as f, tqdm(total=size, desc=f'sha256 {name or os.path.basename(path)}', unit='B',
                                     unit_scale=True, delay=1, leave=False) as progress:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            progress.update(len(chunk))
    return {'bytes': size, 'sha256': digest.hexdigest()}


def publish_dataset(data_dir, meta, written):
    """Move freshly written files into place, meta.json last. written maps final path -> temporary path."""
    meta_path = os.path.join(data_dir, META)
    names = {p: os.path.basename(p) for p in written}
    meta = dict(meta, files={names[p]: file_digest(tmp, names[p]) for p, tmp in written.items()})
    tmp_meta = temporary_path(meta_path)
    with open(tmp_meta, 'w') as f:
        json.dump(meta, f, indent=1)
    for tmp in [*written.values(), tmp_meta]:
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
    if os.path.exists(meta_path):
        os.remove(meta_path)  # from here until meta.json is renamed into place the directory is "not prepared"
        _fsync_dir(data_dir)  # and that must reach the disk before any file it vouched for is replaced
    for final, tmp in [*written.items(), (meta_path, tmp_meta)]:
        os.replace(tmp, final)
    _fsync_dir(data_dir)
    return meta


def load_meta(data_dir):
    """meta.json of a prepared data directory, after checking that every file it lists is there, whole."""
    meta_path = os.path.join(data_dir, META)
    if not os.path.exists(meta_path):
        raise UserError(f"{meta_path} not found: run `python prepare.py {data_dir}` first")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as error:
        raise UserError(f"{meta_path} is unreadable ({error}): run `python prepare.py {data_dir}` again")
    problem = meta_problem(meta)
    if problem:
        raise UserError(f"{meta_path} is not what prepare.py writes ({problem}): run `python prepare.py {data_dir}`"
                        f" again")
    for name, expected in meta['files'].items():
        path = os.path.join(data_dir, name)
        size = os.path.getsize(path) if os.path.exists(path) else None
        if size != expected['bytes']:
            raise UserError(f"{path} does not match {meta_path} (size {size}, expected {expected['bytes']}):"
                            f" run `python prepare.py {data_dir}` again")
    return meta


def meta_problem(meta):
    """What is wrong with the shape of a meta.json's contents (what training reads of it), or None."""
    def is_count(value):
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if not isinstance(meta, dict):
        return f"a JSON {type(meta).__name__}, not an object"
    missing = [key for key in ('tokenizer', 'vocab_size', 'dtype', 'splits', 'files') if key not in meta]
    if missing:
        return f"no {', '.join(missing)}"
    tokenizer, vocab_size = meta['tokenizer'], meta['vocab_size']
    if not is_count(vocab_size) or not vocab_size:
        return f"vocab_size {vocab_size!r} is not a positive integer"
    if meta['dtype'] not in ('uint16', 'uint32') or vocab_size > np.iinfo(meta['dtype']).max + 1:
        return f"dtype {meta['dtype']!r} cannot hold {vocab_size} token ids"
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get('special_ids'), dict):
        return "the tokenizer has no special_ids"
    vocab = tokenizer.get('vocab')
    tokenizer_size = len(vocab) if isinstance(vocab, list) else tokenizer.get('vocab_size')  # char, word | bpe, midi
    if tokenizer_size != vocab_size:
        return f"vocab_size {vocab_size} disagrees with its tokenizer's {tokenizer_size}"
    bad = [name for name, i in tokenizer['special_ids'].items() if not (i is None or is_count(i) and i < vocab_size)]
    if bad:
        return f"special id {bad[0]}={tokenizer['special_ids'][bad[0]]!r} is not a token id below {vocab_size}"
    splits, files = meta['splits'], meta['files']
    for split in SPLITS:
        if not isinstance(splits, dict) or not isinstance(splits.get(split), dict) or not is_count(
                splits[split].get('tokens')):
            return f"no token count of the {split} split"
    if not isinstance(files, dict) or not all(isinstance(f, dict) and is_count(f.get('bytes')) and isinstance(
            f.get('sha256'), str) for f in files.values()):
        return "files is not a table of sizes and sha256s"
    return None


def check_token_ids(data_dir, meta):
    """Raise a UserError if a split holds a token id that is not below meta.json's vocab_size (reads the split)."""
    for split in SPLITS:
        tokens, _ = open_split(data_dir, split, meta)
        largest = int(tokens.max()) if tokens.size else 0
        if largest >= meta['vocab_size']:
            raise UserError(f"{split_paths(data_dir, split)[0]} holds token id {largest}, not below vocab_size"
                            f" {meta['vocab_size']} of {os.path.join(data_dir, META)}: run `python prepare.py"
                            f" {data_dir}` again")


def verify_checksums(data_dir, meta):
    """Check every file meta.json lists against its sha256: catches bytes changed since prepare, size kept."""
    for name, expected in meta.get('files', {}).items():
        path = os.path.join(data_dir, name)
        if file_digest(path)['sha256'] != expected['sha256']:
            raise UserError(f"{path} is corrupted (its sha256 differs from the one in {META}):"
                            f" run `python prepare.py {data_dir}` again")


def open_split(data_dir, split, meta=None):
    """(tokens, document offsets) of one split as read-only memory maps; nothing is read into memory."""
    meta = meta or load_meta(data_dir)
    bin_path, docs_path = split_paths(data_dir, split)
    tokens = np.memmap(bin_path, dtype=np.dtype(meta['dtype']), mode='r')
    return tokens, np.load(docs_path, mmap_mode='r')


def check_free_space(directory, need_bytes, what):
    """Raise a UserError now if directory's file system has less than need_bytes free for what will go there."""
    free = shutil.disk_usage(directory).free
    if free < need_bytes:
        raise _no_space(directory, free, need_bytes, what)


def allocate(path, size, what):
    """Give the file at path (created if need be) size bytes of real disk blocks, so that a full disk is a
    UserError here rather than a SIGBUS later, at a write through a memory map of a sparse file."""
    with open(path, 'ab') as f:
        try:
            os.posix_fallocate(f.fileno(), 0, size)
        except AttributeError:  # no posix_fallocate (macOS): a sparse file, as before
            f.truncate(max(size, os.path.getsize(path)))
        except OSError as error:
            if error.errno == errno.ENOSPC:
                directory = os.path.dirname(os.path.abspath(path))
                raise _no_space(directory, shutil.disk_usage(directory).free, size, what) from None
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot: sparse
                raise
            f.truncate(max(size, os.path.getsize(path)))


def _no_space(directory, free, need_bytes, what):
    return UserError(f"{directory} has {_mib(free)} free but {what} need about {_mib(need_bytes)}:"
                     f" free some space or choose another directory")


def free_space(directory):
    """'<n> MiB free on <mount point>': the file system a directory is on, and its room, in the user's words."""
    mount = os.path.abspath(directory)
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    return f"{_mib(shutil.disk_usage(directory).free)} free on {mount}"


def _mib(n):
    return f'{n / 2**20:,.1f} MiB'


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
