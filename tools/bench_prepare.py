"""Benchmark of prepare.py on a large generated corpus: throughput against raw tiktoken, and peak memory.

    python tools/bench_prepare.py                          # 200 MB and 400 MB corpora, every core
    python tools/bench_prepare.py --sizes_mb=[200] --num_proc=2
    python tools/bench_prepare.py --sizes_mb=[20] --corpus_only=True --work_dir=data   # only write data/stories_20mb.jsonl

For each corpus size it writes a JSON-lines corpus of story-like text (generated here, no download), then in
the same run measures, with the same number of workers:
  raw        tiktoken's encode_ordinary_batch(num_threads=num_proc) over the texts already in memory
  ideal      num_proc forked processes, each running a plain encode_ordinary loop over its share of the texts
             already in memory: the fastest way to call tiktoken, with no reading, writing or bookkeeping; a
             stricter yardstick than raw for short documents, where encode_ordinary_batch's thread pool
             costs about as much as the encoding itself
  prepare    `python prepare.py DIR --source=corpus.jsonl --num_proc=N` in a fresh process with an empty
             datasets cache: JSON -> Arrow, tokenize, write the bins, checksums, everything a user waits for
  learned    the same prepare with --vocab_size=learned_vocab_size: a byte-level BPE learned from the training
             split, then encoded through the same writer; its MB/s (learning included) against raw GPT-2 tiktoken,
             and the seconds the learning alone takes on the texts in memory (one process)
and reports MB/s and tokens/s of both, their ratio, and prepare's peak memory: the proportional set size
(PSS: each page shared by n processes counts 1/n in each, so forked workers sharing the parent's pages are not
counted twice) summed over prepare's process and all its workers, sampled every 50 ms from /proc (Linux).
"""
import dataclasses
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from configurator import UserError, option, parse, run
from slm import corpus
from slm import tokenizer as tok


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class BenchConfig:
    sizes_mb: list[int] = option([200, 400], low=1)  # corpus sizes to measure, in MB
    num_proc: int = option(0, low=0)  # prepare's workers and tiktoken's threads (0 = one per CPU core)
    work_dir: str = ''            # where corpora and prepared data go ('' = a directory in the system temp)
    keep: bool = False            # keep the corpora for the next run (they are regenerated only if missing)
    seed: int = option(1337, low=0, high=2**32 - 1)  # seeds the generated corpus
    learned_vocab_size: int = option(512, low=0)  # also prepare with a BPE of this many ids learned from the
    #                               corpus (0 = skip)
    corpus_only: bool = False     # only write the corpora (work_dir/stories_<size>mb.jsonl), measure nothing


NAMES = ['Lily', 'Tom', 'Mia', 'Ben', 'Sara', 'Max', 'Anna', 'Sam', 'Lucy', 'Jack', 'Zoe', 'Leo', 'Ella', 'Finn',
         'Rosa', 'Omar', 'Nina', 'Theo', 'Ivy', 'Kai']
ANIMALS = ['dog', 'cat', 'bunny', 'bird', 'frog', 'duck', 'bear', 'fox', 'owl', 'mouse', 'puppy', 'kitten',
           'turtle', 'squirrel', 'lamb', 'pony', 'fish', 'bee', 'ladybug', 'hedgehog']
THINGS = ['ball', 'kite', 'red hat', 'toy car', 'big box', 'blue cup', 'shiny stone', 'little boat', 'drum',
          'book', 'cake', 'apple', 'flower', 'balloon', 'blanket', 'spoon', 'crayon', 'sock', 'leaf', 'key']
PLACES = ['park', 'garden', 'forest', 'beach', 'kitchen', 'school', 'farm', 'pond', 'hill', 'library',
          'market', 'river', 'backyard', 'zoo', 'cave', 'meadow', 'bakery', 'playground', 'attic', 'barn']
FEELINGS = ['happy', 'sad', 'scared', 'proud', 'sleepy', 'angry', 'curious', 'excited', 'shy', 'brave',
            'grumpy', 'surprised', 'calm', 'lonely', 'silly', 'worried', 'thankful', 'kind', 'bored', 'glad']
ACTIONS = ['played with', 'looked for', 'found', 'shared', 'dropped', 'painted', 'carried', 'hid', 'fixed',
           'washed', 'hugged', 'threw', 'built', 'cleaned', 'counted', 'lost', 'chased', 'showed', 'opened',
           'gave']
SENTENCES = [
    "Once upon a time, there was a little {animal} named {name}.",
    "{name} liked to go to the {place} every day.",
    "One day, {name} {action} a {thing} near the {place}.",
    "{name} felt very {feeling}.",
    '"Can I play too?" asked the {animal}.',
    '"Yes, you can!" said {name} with a big smile.',
    "They {action} the {thing} together until the sun went down.",
    "But then the {thing} fell into the {place}, and {name} was {feeling}.",
    "Mom said, \"Be careful, {name}. The {place} can be dangerous.\"",
    "The {animal} was {feeling} because it had no friends.",
    "{name} and the {animal} ran to the {place} to look for the {thing}.",
    "After a long time, they {action} it under a tree.",
    "{name} learned that it is good to be {feeling} and to share.",
    "From that day on, {name} and the {animal} were best friends.",
    "The end.",
]


def story(rng):
    """One short story-like text: a beginning, 4 to 12 middle sentences, often a closing line."""
    fill = dict(name=rng.choice(NAMES), animal=rng.choice(ANIMALS), place=rng.choice(PLACES))
    lines = [SENTENCES[0]] + rng.choices(SENTENCES[1:13], k=rng.randint(4, 12)) + SENTENCES[13:rng.randint(13, 15)]
    out = []
    for line in lines:
        out.append(line.format(thing=rng.choice(THINGS), feeling=rng.choice(FEELINGS),
                               action=rng.choice(ACTIONS), **fill))
    paragraphs = rng.randint(1, 3)  # TinyStories has paragraphs: line breaks inside a story
    cut = sorted(rng.sample(range(1, len(out)), paragraphs - 1))
    return '\n\n'.join(' '.join(out[a:b]) for a, b in zip([0, *cut], [*cut, len(out)]))


def write_corpus(path, size_mb, seed):
    """A JSON-lines file of at least size_mb MB of stories, {"text": ...} per line."""
    rng = random.Random(seed)
    written = 0
    with open(path + '.part', 'w', encoding='utf-8') as f:
        while written < size_mb * 10**6:
            line = json.dumps({'text': story(rng)}) + '\n'
            f.write(line)
            written += len(line)
    os.replace(path + '.part', path)


def read_texts(path):
    with open(path, encoding='utf-8') as f:
        return [json.loads(line)['text'] for line in f]


def raw_tiktoken(texts, num_threads):
    """(seconds, tokens) of encode_ordinary_batch over texts, in chunks so the id lists never pile up."""
    encoding = tok.BPETokenizer().encoding  # GPT-2's, from the project's cache offline, as prepare.py loads it
    tokens, start = 0, time.perf_counter()
    for i in range(0, len(texts), 20_000):
        tokens += sum(map(len, encoding.encode_ordinary_batch(texts[i:i + 20_000], num_threads=num_threads)))
    return time.perf_counter() - start, tokens


def ideal_seconds(texts, num_proc):
    """Seconds for num_proc forked processes to encode their contiguous shares of texts in a plain loop."""
    fork = multiprocessing.get_context('fork')  # the children inherit texts: nothing is pickled
    bounds = [len(texts) * i // num_proc for i in range(num_proc + 1)]
    start = time.perf_counter()
    workers = [fork.Process(target=encode_share, args=(texts, a, b)) for a, b in zip(bounds, bounds[1:])]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.perf_counter() - start


def timed_learning(texts, vocab_size):
    """Seconds that learning a BPE of vocab_size ids from texts (already in memory) takes."""
    start = time.perf_counter()
    tok.LearnedBPETokenizer.build(texts, vocab_size, total=len(texts))
    return time.perf_counter() - start


def encode_share(texts, start, end):
    encoding = tok.BPETokenizer().encoding
    for text in texts[start:end]:
        encoding.encode_ordinary(text)


class TreeMemory:
    """Peak memory (PSS, total and anonymous) of a process and all its descendants, sampled from /proc."""

    def __init__(self, pid, interval=0.05):
        self.pid, self.interval = pid, interval
        self.peak_pss = self.peak_anon = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def stop(self):
        self._done.set()
        self._thread.join()

    def _watch(self):
        while not self._done.is_set():
            pss = anon = 0
            for pid in self._tree():
                memory = _smaps_rollup(pid)
                pss += memory.get('Pss', 0)
                anon += memory.get('Pss_Anon', 0)
            self.peak_pss, self.peak_anon = max(self.peak_pss, pss), max(self.peak_anon, anon)
            self._done.wait(self.interval)

    def _tree(self):
        parents = {}
        for name in os.listdir('/proc'):
            if name.isdigit():
                try:
                    with open(f'/proc/{name}/stat') as f:
                        parents[int(name)] = int(f.read().rsplit(')', 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    pass
        tree, frontier = {self.pid}, [self.pid]
        while frontier:
            children = [pid for pid, parent in parents.items() if parent in frontier and pid not in tree]
            tree.update(children)
            frontier = children
        return tree


def _smaps_rollup(pid):
    """The memory totals of /proc/PID/smaps_rollup, in bytes."""
    try:
        with open(f'/proc/{pid}/smaps_rollup') as f:
            fields = (line.split(':', 1) for line in f)
            return {key: int(value.split()[0]) * 1024 for key, value in fields if value.endswith('kB\n')}
    except OSError:
        return {}


def run_prepare(corpus, data_dir, num_proc, cache_dir, *options):
    """(seconds, meta, peak memory) of prepare.py on the corpus in a fresh process with an empty datasets cache."""
    env = dict(os.environ, HF_DATASETS_CACHE=cache_dir, HF_DATASETS_OFFLINE='1')
    shutil.rmtree(cache_dir, ignore_errors=True)
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, 'prepare.py'), data_dir, f'--source={corpus}',
                                f'--num_proc={num_proc}', *options], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    memory = TreeMemory(process.pid)
    out, err = process.communicate()
    seconds = time.perf_counter() - start
    memory.stop()
    shutil.rmtree(cache_dir, ignore_errors=True)
    if process.returncode:
        raise UserError(f"prepare.py failed: {err.strip().splitlines()[-1]}")
    with open(os.path.join(data_dir, 'meta.json')) as f:
        return seconds, json.load(f), memory


def bench(cfg):
    num_proc = cfg.num_proc or corpus.cpu_count()
    work_dir = cfg.work_dir or os.path.join(tempfile.gettempdir(), 'bench_prepare')
    os.makedirs(work_dir, exist_ok=True)
    print(f"{num_proc} workers / threads; {os.cpu_count()} CPUs visible; load average"
          f" {os.getloadavg()[0]:.1f} at the start (on a shared machine timings are noisy; each ratio compares"
          f" two runs taken back to back)")
    results = []
    for size_mb in cfg.sizes_mb:
        corpus_path = os.path.join(work_dir, f'stories_{size_mb}mb.jsonl')
        if not os.path.exists(corpus_path):
            write_corpus(corpus_path, size_mb, cfg.seed)
        if cfg.corpus_only:
            print(f"wrote {corpus_path}")
            continue
        mb = os.path.getsize(corpus_path) / 1e6
        texts = read_texts(corpus_path)
        text_mb = sum(len(t.encode()) for t in texts) / 1e6
        raw_seconds, raw_tokens = raw_tiktoken(texts, num_proc)
        ideal_mb_s = text_mb / ideal_seconds(texts, num_proc)
        learn_s = timed_learning(texts, cfg.learned_vocab_size) if cfg.learned_vocab_size else None
        del texts
        data_dir, cache_dir = os.path.join(work_dir, f'data_{size_mb}'), os.path.join(work_dir, 'hf_cache')
        seconds, meta, memory = run_prepare(corpus_path, data_dir, num_proc, cache_dir)
        tokens = sum(s['tokens'] - s['documents'] for s in meta['splits'].values())  # less one eot per story
        assert tokens == raw_tokens, (tokens, raw_tokens)  # both sides did the same work
        result = {'corpus_mb': round(mb, 1), 'text_mb': round(text_mb, 1), 'tokens': tokens,
                  'raw_mb_s': text_mb / raw_seconds, 'raw_tokens_s': tokens / raw_seconds,
                  'prepare_mb_s': text_mb / seconds, 'prepare_tokens_s': tokens / seconds,
                  'ratio': raw_seconds / seconds, 'raw_s': raw_seconds, 'prepare_s': seconds,
                  'ideal_mb_s': ideal_mb_s, 'ratio_to_ideal': text_mb / seconds / ideal_mb_s,
                  'peak_pss_mb': memory.peak_pss / 1e6, 'peak_anon_mb': memory.peak_anon / 1e6}
        results.append(result)
        print(f"{text_mb:7.1f} MB of text, {tokens / 1e6:.1f}M tokens: raw tiktoken {raw_seconds:6.1f} s"
              f" ({result['raw_mb_s']:.2f} MB/s, {result['raw_tokens_s'] / 1e6:.2f}M tok/s);"
              f" prepare {seconds:6.1f} s ({result['prepare_mb_s']:.2f} MB/s,"
              f" {result['prepare_tokens_s'] / 1e6:.2f}M tok/s); ratio {result['ratio']:.2f}"
              f" (to ideal {ideal_mb_s:.2f} MB/s: {result['ratio_to_ideal']:.2f});"
              f" peak memory {result['peak_pss_mb']:.0f} MB PSS (anonymous {result['peak_anon_mb']:.0f} MB)",
              flush=True)
        shutil.rmtree(data_dir, ignore_errors=True)
        if cfg.learned_vocab_size:
            seconds, meta, memory = run_prepare(corpus_path, data_dir, num_proc, cache_dir,
                                                f'--vocab_size={cfg.learned_vocab_size}')
            result.update(learned_s=seconds, learned_mb_s=text_mb / seconds, learned_ratio=raw_seconds / seconds,
                          learn_s=learn_s, learned_tokens=sum(s['tokens'] for s in meta['splits'].values()),
                          learned_peak_pss_mb=memory.peak_pss / 1e6)
            print(f"{text_mb:7.1f} MB of text, learned BPE of {cfg.learned_vocab_size:,} ids: prepare {seconds:6.1f} s"
                  f" ({result['learned_mb_s']:.2f} MB/s, {result['learned_tokens'] / 1e6:.1f}M tokens), of which"
                  f" learning ~{learn_s:.1f} s; ratio to raw GPT-2 tiktoken {result['learned_ratio']:.2f};"
                  f" peak memory {result['learned_peak_pss_mb']:.0f} MB PSS", flush=True)
            shutil.rmtree(data_dir, ignore_errors=True)
        if not cfg.keep:
            os.remove(corpus_path)
    return results


def main(argv=None):
    return bench(parse(BenchConfig, argv))


if __name__ == '__main__':
    run(main)
