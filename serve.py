"""A web playground for a trained checkpoint: type a prompt, watch a sample grow token by token with the token
boundaries visible, and click any token to see the model's next-token distribution where it was drawn.

    python serve.py --out_dir=out-akjv-char           # prints http://127.0.0.1:8000 ; Ctrl-C stops it
    python serve.py --out_dir=out-bach --port=8001    # music: the sample's piano roll and its .mid file
    python serve.py --out_dir=out-akjv --host=0.0.0.0  # let other machines connect (the default: this one only)

The page is three plain files in playground/ (HTML, JavaScript, CSS: no build step, nothing fetched from
elsewhere), served with these routes:

    GET  /api/model      what the checkpoint is, and the defaults and limits of every setting
    POST /api/generate   {"prompt", "temperature", "top_k", "top_p", "max_new_tokens", "seed"}: server-sent
                         events, 'start' (the prompt's ids and tokens), a 'token' per new token (id, text), 'done'
    POST /api/next       {"ids", "temperature", "top_k", "top_p", "n"}: the n likeliest tokens to follow ids,
                         each with its probability under the model and its chance of being drawn at the settings
    POST /api/notes      {"ids"}: a music checkpoint's notes for the piano roll; POST /api/midi: its .mid file

Generation is sample.py's (generation.generate_as, with a SampleConfig checked as sample.py checks one), so a seed
gives the page exactly the text `python sample.py --start=PROMPT --seed=SEED ...` prints. A bad setting is a
422 with the one-line message sample.py would print, shown on the page.

One model serves one request at a time, on the main thread: the others wait in a queue of at most --queue
requests, and one beyond that gets a 429 (busy; try again). A stream whose page goes away stops at its next token.
"""
import sys

import torch

import configurator
from configurator import parse, run
from slm import runtime
from slm.playground import Background, Playground, ServeConfig, check_port


def serve(cfg):
    """Serve until Ctrl-C. The model's jobs run on this, the main thread, and the server in a thread beside it:
    torch's threads, driven from another thread, generated several times slower (docs/playground.md)."""
    configurator.check(cfg)
    torch.set_num_threads(runtime.resolve_threads(cfg.threads))
    check_port(cfg.host, cfg.port)
    playground = Playground(cfg, worker=False)
    server = Background(playground, cfg.port, cfg.host)
    print(f"serving {playground.path} ({playground.describe()['parameters']:,} parameters, {playground.device})"
          f" at {server.url} ; Ctrl-C stops it", file=sys.stderr)
    try:
        playground.work()
    except KeyboardInterrupt:
        server.close(force=True)
        print("stopped", file=sys.stderr)
    else:
        server.close()


def main(argv=None):
    return serve(parse(ServeConfig, argv))


if __name__ == '__main__':
    run(main)
