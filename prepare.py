"""Corpus -> tokenizer -> train.bin / val.bin + document offsets + meta.json.

    python prepare.py data/akjv                          # AKJV Bible, word level, one document per verse
    python prepare.py data/akjv_char                     # the same at character level (see naming below)
    python prepare.py data/mytext --input=corpus.txt     # your own text, one document per line
    python prepare.py data/tinystories                   # TinyStories from the Hugging Face hub, GPT-2 BPE
    python prepare.py data/tinystories --max_docs=20000  # only the first 20,000 training stories
    python prepare.py data/tinystories_bpe4k --source=tinystories --vocab_size=4096   # learns its own BPE first
    python prepare.py data/akjv_bpe1k --vocab_size=1024  # AKJV with a byte-level BPE of 1,024 ids of its own
    python prepare.py data/mine --source=stories.jsonl --text_column=story   # a hub name or local files
    python prepare.py data/bach                          # Bach chorales from music21's corpus, MIDI events
    python prepare.py data/mymusic --input=folder --transpose=2   # your .mid files, transposed -2..+2 for training

Naming: when --source or --tokenizer is not given, it is read from the directory name
data/<source>[_<option>...]: `akjv_char` means source akjv, char tokenizer; `akjv_booked` adds book names;
`tinystories` means source tinystories, whose default tokenizer is bpe (GPT-2's); `akjv_bpe1k` and
`tinystories_bpe512` a byte-level BPE of 1,024 and 512 ids learned from the training split (--vocab_size).

How a source is read and written in bounded memory: slm/corpus.py.
"""
from configurator import parse, run
from slm import corpus
from slm.corpus import PrepareConfig


def main(argv=None):
    cfg = corpus.resolve(parse(PrepareConfig, argv))
    meta = corpus.prepare_dir(cfg)
    train, val = meta['splits']['train'], meta['splits']['val']
    print(f"{cfg.data_dir}: source {cfg.source}, {cfg.tokenizer} tokenizer, vocab {meta['vocab_size']},"
          f" {meta['dtype']}; train {train['tokens']:,} tokens / {train['documents']:,} docs,"
          f" val {val['tokens']:,} tokens / {val['documents']:,} docs")
    return meta


if __name__ == '__main__':
    run(main)
