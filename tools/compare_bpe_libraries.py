"""Which library learns the byte-level BPE: Hugging Face `tokenizers` or `rustbpe` (+ tiktoken to encode)?

    pip install tokenizers==0.23.3     # the library tokenizer.py does not use, for the comparison only
    python tools/compare_bpe_libraries.py --vocab_size=4096 --rounds=5

On the AKJV Bible (about 4.4 MB of text, one document per verse) it times, in interleaved rounds so that a
shared CPU's load falls on both alike, each library learning a vocab_size vocabulary from the same texts and
encoding those texts with what it learned, one thread each (RAYON_NUM_THREADS=1, as one prepare.py worker
encodes); it prints the medians and their ratios.
"""
import dataclasses
import os
import statistics
import time

from slm import corpus


os.environ.setdefault('RAYON_NUM_THREADS', '1')  # before the Rust libraries start their thread pools
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')

from configurator import parse, run
from slm import tokenizer as tok


@dataclasses.dataclass
class CompareConfig:
    vocab_size: int = 4096    # vocabulary learned, specials included
    rounds: int = 5           # interleaved rounds: each learns and encodes once per library


def hf_learn(texts, vocab_size):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(tok.SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    return bpe


def hf_encode(bpe, texts):
    return sum(len(e.ids) for e in bpe.encode_batch(texts, add_special_tokens=False))


def rustbpe_learn(texts, vocab_size):
    return tok.LearnedBPETokenizer.build(texts, vocab_size)


def tiktoken_encode(learned, texts):
    return sum(map(len, learned.encode(texts)))


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def compare(cfg):
    texts = corpus.akjv_documents(booked=False)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    print(f"{mb:.1f} MB of AKJV verses, vocab {cfg.vocab_size}, {cfg.rounds} interleaved rounds,"
          f" one thread each; load average {os.getloadavg()[0]:.1f} (a shared CPU: compare the ratios)")
    times = {key: [] for key in ('hf_learn', 'rustbpe_learn', 'hf_encode', 'tiktoken_encode')}
    for _ in range(cfg.rounds):
        seconds, hf = timed(hf_learn, texts, cfg.vocab_size)
        times['hf_learn'].append(seconds)
        seconds, learned = timed(rustbpe_learn, texts, cfg.vocab_size)
        times['rustbpe_learn'].append(seconds)
        seconds, hf_tokens = timed(hf_encode, hf, texts)
        times['hf_encode'].append(seconds)
        seconds, tiktoken_tokens = timed(tiktoken_encode, learned, texts)
        times['tiktoken_encode'].append(seconds)
    median = {key: statistics.median(values) for key, values in times.items()}
    print(f"learn:  tokenizers {median['hf_learn']:.2f} s, rustbpe {median['rustbpe_learn']:.2f} s"
          f" (tokenizers / rustbpe: {median['hf_learn'] / median['rustbpe_learn']:.2f})")
    print(f"encode: tokenizers {mb / median['hf_encode']:.2f} MB/s ({hf_tokens:,} tokens), tiktoken"
          f" {mb / median['tiktoken_encode']:.2f} MB/s ({tiktoken_tokens:,} tokens)"
          f" (tiktoken / tokenizers: {median['hf_encode'] / median['tiktoken_encode']:.2f})")
    return median


def main(argv=None):
    return compare(parse(CompareConfig, argv))


if __name__ == '__main__':
    run(main)
