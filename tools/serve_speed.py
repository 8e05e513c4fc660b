"""How fast the playground streams: serve a checkpoint in this process as serve.py does (the model on the main
thread, the server beside it) under each --decode and --threads, post one request for a sample at a time
(--repeats times), then two at once, and print when each finished and the rate its `done` event reports
(docs/playground.md).

    python tools/serve_speed.py --out_dir=out-akjv-char                       # aot and eager, 1 and 2 threads
    python tools/serve_speed.py --out_dir=out-akjv-char --decodes=aot --threads=2 --model_threads=main,worker

The server's own refusals are off the clock: each request is valid and the queue has room for two.
"""
import dataclasses
import json
import os
import threading
import time
import urllib.request

import torch

from configurator import listed, option, parse, run
from slm import decode
from slm.playground import Background, Playground, ServeConfig, check_port


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class SpeedConfig:
    out_dir: str = 'out-akjv-char'  # the checkpoint's out_dir
    decodes: str = option('aot,eager', some_of=('eager', *decode.STEPS))  # serve.py --decode values, in turn
    threads: tuple[int, ...] = option((1, 2), low=1)  # serve.py --threads values, in turn
    model_threads: str = option('main', some_of=('main', 'worker'))  # where the model's jobs run: main (as
    #                               serve.py runs them), worker (a thread of their own, as in the tests)
    prompt: str = 'And God said'
    max_new_tokens: int = option(500, low=1)
    temperature: float = option(0.8, low=0)
    seed: int = 1
    repeats: int = option(3, low=1)  # requests one at a time, before the two at once
    port: int = option(8766, low=1, high=65535)


def post(url, body):
    """Seconds until the stream of one /api/generate request ended, and its done event's tokens/s."""
    request = urllib.request.Request(url + '/api/generate', data=json.dumps(body).encode(), method='POST',
                                     headers={'Content-Type': 'application/json'})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        blocks = response.read().decode().split('\n\n')[:-1]
    seconds = time.perf_counter() - start
    done = json.loads(blocks[-1].split('\n')[1].removeprefix('data: '))
    return seconds, done['tokens_per_s']


def measure(cfg, how, threads, model_thread):
    """(seconds to be ready, seconds and tokens/s of each request alone, the same of two sent at once) under how
    and threads, the model's jobs on this thread as serve.py runs them, or on a worker thread."""
    torch.set_num_threads(threads)
    check_port('127.0.0.1', cfg.port)
    start = time.perf_counter()
    playground = Playground(ServeConfig(out_dir=cfg.out_dir, decode=how, threads=threads,
                                                    port=cfg.port), worker=model_thread == 'worker')
    made = time.perf_counter() - start
    server = Background(playground, cfg.port)
    body = {'prompt': cfg.prompt, 'max_new_tokens': cfg.max_new_tokens, 'temperature': cfg.temperature,
            'seed': cfg.seed}
    alone, together = [], []

    def client():
        try:
            alone.extend(post(server.url, body) for _ in range(cfg.repeats))
            senders = [threading.Thread(target=lambda: together.append(post(server.url, body))) for _ in range(2)]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
        finally:
            playground.jobs.put(None)  # the model's loop ends

    try:
        if model_thread == 'worker':
            client()
        else:
            threading.Thread(target=client).start()
            playground.work()
    finally:
        server.close()
    return made, alone, sorted(together)


def main(argv=None):
    cfg = parse(SpeedConfig, argv)
    print(f"{cfg.max_new_tokens} new tokens a request, temperature {cfg.temperature:g}; {cfg.out_dir}")
    print("model on  decode  threads  made in  one request: finished in  tokens/s     two at once: finished at")
    for model_thread in listed(cfg.model_threads):
        for how in listed(cfg.decodes):
            for threads in cfg.threads:
                made, alone, together = measure(cfg, how, threads, model_thread)
                seconds, rates = [s for s, _ in alone], [r for _, r in alone]
                print(f"{model_thread:>8}  {how:>6}  {threads:>7}  {made:>5.1f} s  {min(seconds):>12.3f}-"
                      f"{max(seconds):.3f} s  {min(rates):>6,.0f}-{max(rates):,.0f}  {together[0][0]:>10.2f} s and"
                      f" {together[1][0]:.2f} s")


if __name__ == '__main__':
    run(main)
