"""The web playground's server: its settings (ServeConfig), the model's jobs (Playground: one at a time, on the
thread that made it), the FastAPI routes that stream a sample and chart the next-token odds, and a server in a
background thread (Background: serve.py, the tests and tools). serve.py is its command line; the page is in
playground/.
"""
import dataclasses
import json
import math
import os
import queue
import socket
import sys
import tempfile
import threading
import time

import torch

import configurator
from configurator import UserError, option
from slm import checkpoint, decode, generation, music, runtime
from slm import tokenizer as tok


PAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'playground')
PAGE_FILES = {'/': ('index.html', 'text/html'), '/playground.js': ('playground.js', 'text/javascript'),
              '/playground.css': ('playground.css', 'text/css')}
SETTINGS = ('temperature', 'top_k', 'top_p', 'max_new_tokens', 'seed')  # of a SampleConfig, set per request
FLUSH_SECONDS = 1 / 60  # a stream sends what is ready at most this often: a screen's frame


@dataclasses.dataclass
class ServeConfig:
    out_dir: str = 'out'          # where train.py wrote its checkpoints
    checkpoint: str = ''          # a checkpoint file ('' = out_dir/best.pt, else out_dir/ckpt.pt)
    host: str = '127.0.0.1'       # the address to listen on (127.0.0.1: this machine only; 0.0.0.0: every one)
    port: int = option(8000, low=1, high=65535)  # the port to listen on
    max_new_tokens: int = option(5000, low=1)  # the most tokens one request may ask for
    max_prompt_chars: int = option(20000, low=1)  # the longest prompt a request may send
    queue: int = option(8, low=1)  # requests that may wait for the model; one more gets 429 (busy)
    device: str = option('auto', choices=runtime.DEVICES)  # auto: cuda if present, else mps, else cpu
    threads: int = option(0, low=0)  # CPU threads torch uses (0 = one per physical core)
    decode: str = option('auto', choices=('auto', 'eager', *decode.STEPS))  # how a GPT steps one token (sample.py
    #                               --decode), made before the server starts. auto: aot on the CPU (eager if it
    #                               cannot be compiled), else eager


class RequestError(Exception):
    """A request the playground cannot serve: its HTTP status and the one line the page shows."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


class Playground:
    """The checkpoint's model and tokenizer, and the one thread that runs them: every use of the model is a job on
    its queue, so that requests take turns instead of sharing the CPU's threads."""

    def __init__(self, cfg, worker=True):
        """worker: start the thread that runs the model's jobs (False: the caller runs self.work())."""
        self.cfg = cfg
        self.device = runtime.resolve_device(cfg.device)
        self.path = checkpoint.path_to_read(cfg.out_dir, cfg.checkpoint)
        ckpt = checkpoint.load(self.path)
        self.model = checkpoint.restore_model(ckpt).to(self.device).eval()
        self.tokenizer = tok.from_meta(ckpt['tokenizer'])
        self.new_document = generation.document_ends(ckpt, self.tokenizer)
        self.iter_num = ckpt.get('iter_num')
        self.jobs = queue.Queue(maxsize=cfg.queue)
        # the compiled steps are measured on the CPU only (docs/generation.md)
        self.decode = ('aot' if self.device == 'cpu' else 'eager') if cfg.decode == 'auto' else cfg.decode
        self.make_decode_step()
        if worker:
            threading.Thread(target=self.work, daemon=True, name='playground model').start()

    def make_decode_step(self):
        """Make the compiled decode step now, so that no request waits for it: a sample past block_size (one
        row, as a request has), so that the step and the re-read of a full window are both made. With
        --decode=auto, a step that cannot be compiled (no C++ compiler) is a warning, and the model steps eagerly."""
        if self.decode == 'eager' or self.model.args.model_type != 'gpt':
            return
        print(f"making the GPT's decode step ({self.decode})...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        ids = torch.zeros(1, 1, dtype=torch.long, device=self.device)  # any token
        warm_up = generation.SampleConfig(max_new_tokens=self.model.args.block_size + 1, decode=self.decode)
        try:
            for _ in generation.generate_as(self.model, ids, warm_up):
                pass
        except UserError as error:
            if self.cfg.decode != 'auto':
                raise
            print(f"warning: {error}; stepping eagerly", file=sys.stderr, flush=True)
            self.decode = 'eager'
            return
        print(f"made in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)

    def work(self):
        """Run the queued jobs in turn, until a None in the queue."""
        while (job := self.jobs.get()) is not None:
            job()

    def submit(self, job):
        """Queue job (a callable run on the model's thread), or refuse it with a 429 when the queue is full."""
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise RequestError(429, f"busy: {self.cfg.queue} requests are waiting for the model; try again in a"
                                    f" moment")

    def call(self, fn):
        """fn() on the model's thread, in turn; its result, or the exception it raised."""
        done, box = threading.Event(), {}

        def job():
            try:
                box['result'] = fn()
            except Exception as error:  # handed to the request's thread, which answers with it
                box['error'] = error
            except BaseException:  # Ctrl-C: the request's thread must not wait for ever
                box['error'] = RequestError(503, "the playground is stopping")
                raise
            finally:
                done.set()

        self.submit(job)
        done.wait()
        if 'error' in box:
            raise box['error']
        return box['result']

    # -----------------------------------------------------------------------------------------------------
    # what a request asks for, checked

    def settings(self, body):
        """A SampleConfig with the request's settings, checked by sample.py's own declarations (422 if not)."""
        values = {}
        for key in SETTINGS:
            if key in body:
                value = body[key]
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise RequestError(422, f"{key} must be a number, got {value!r}")
                values[key] = configurator.parse_value(generation.SampleConfig, key, repr(value))
        cfg = generation.SampleConfig(**values, decode=self.decode)
        try:
            configurator.check(cfg)
        except UserError as error:
            raise RequestError(422, str(error).replace('--', ''))
        if cfg.max_new_tokens > self.cfg.max_new_tokens:
            raise RequestError(422, f"max_new_tokens={cfg.max_new_tokens:,} is more than this playground serves"
                                    f" at once ({self.cfg.max_new_tokens:,}; serve.py --max_new_tokens sets it)")
        if cfg.max_new_tokens == 0:
            raise RequestError(422, "max_new_tokens must be positive")
        return cfg

    def prompt(self, body):
        """(the text a sample begins with, its ids): the request's prompt, checked for length."""
        text = body.get('prompt', '')
        if not isinstance(text, str):
            raise RequestError(422, "prompt must be text")
        if len(text) > self.cfg.max_prompt_chars:
            raise RequestError(422, f"the prompt is {len(text):,} characters; this playground takes at most"
                                    f" {self.cfg.max_prompt_chars:,} (serve.py --max_prompt_chars sets it)")
        text = generation.sample_start(self.tokenizer, text)
        try:
            ids = generation.prompt_ids(self.tokenizer, text)
        except UserError as error:
            raise RequestError(422, str(error).replace('with --start=TEXT', 'in the prompt box'))
        self.check_length(ids, 'the prompt')
        return text, ids

    def check_length(self, ids, what):
        block_size = self.model.args.block_size
        if self.model.args.model_type == 'gpt' and len(ids) > block_size:
            raise RequestError(422, f"{what} is {len(ids):,} tokens; this model reads at most its block_size of"
                                    f" {block_size}: shorten it")

    def token_ids(self, body, key='ids'):
        ids = body.get(key)
        vocab = self.model.args.vocab_size
        if not isinstance(ids, list) or not ids or not all(type(i) is int and 0 <= i < vocab for i in ids):
            raise RequestError(422, f"{key} must be a non-empty list of token ids from 0 to {vocab - 1}")
        return ids

    # -----------------------------------------------------------------------------------------------------
    # the routes' work

    def describe(self):
        args = self.model.args
        parameters = sum(p.numel() for p in self.model.parameters())
        defaults = generation.SampleConfig()
        return {'checkpoint': self.path, 'iter_num': self.iter_num, 'model_type': args.model_type,
                'parameters': parameters, 'n_layer': args.n_layer, 'n_embd': args.n_embd,
                'block_size': args.block_size if args.model_type == 'gpt' else None, 'vocab_size': args.vocab_size,
                'tokenizer': self.tokenizer.kind, 'is_music': self.tokenizer.kind == 'midi', 'device': self.device,
                'defaults': {key: getattr(defaults, key) for key in SETTINGS},
                'limits': {'max_new_tokens': self.cfg.max_new_tokens, 'max_prompt_chars': self.cfg.max_prompt_chars}}

    def generate(self, body):
        """The events of one sample, as lists of (event, data) pairs; checked before anything is queued."""
        cfg = self.settings(body)
        text, ids = self.prompt(body)
        events, stop = queue.Queue(), threading.Event()

        def job():
            try:
                started = time.perf_counter()
                decode_next = self.tokenizer.stream_decoder()
                events.put(('start', {'prompt': text, 'ids': ids,
                                      'tokens': [self.tokenizer.decode([i]) for i in ids]}))
                n = 0
                for token in generation.generate_as(self.model, torch.tensor([ids], device=self.device), cfg,
                                                    self.new_document):
                    if stop.is_set():
                        break
                    token = int(token[0])
                    events.put(('token', {'id': token, 'text': decode_next(token)}))
                    n += 1
                seconds = time.perf_counter() - started
                events.put(('done', {'tokens': n, 'seconds': seconds, 'tokens_per_s': n / seconds if seconds else 0}))
            except Exception as error:  # the page shows it; the server goes on
                events.put(('error', {'error': f"generation failed: {error}"}))
            finally:  # Ctrl-C included: the stream ends
                events.put(None)

        self.submit(job)

        def stream():
            """Lists of events, one per FLUSH_SECONDS at most: waking for every token took the model's thread
            more time than the token (the two threads handed the interpreter to each other at every one)."""
            try:
                is_done = False
                while not is_done:
                    ready = [events.get()]
                    time.sleep(FLUSH_SECONDS)
                    while not events.empty():
                        ready.append(events.get_nowait())
                    is_done = ready[-1] is None  # the job's last put
                    if ready != [None]:
                        yield [event for event in ready if event is not None]
            finally:  # the page went away (or the stream ended): the job stops at its next token
                stop.set()

        return stream()

    def next_tokens(self, body):
        cfg = self.settings(body)
        ids = self.token_ids(body)
        self.check_length(ids, 'the context')
        n = body.get('n', 10)
        if type(n) is not int or not 1 <= n <= 100:
            raise RequestError(422, "n must be a whole number from 1 to 100")
        token = body.get('token')  # the token shown at this place, whose row the chart must hold (None: none)
        if token is not None and not (type(token) is int and 0 <= token < self.model.args.vocab_size):
            raise RequestError(422, f"token must be a token id from 0 to {self.model.args.vocab_size - 1}")
        ids = generation.current_document(ids, self.new_document)  # as the sample was drawn from it
        rows = self.call(lambda: generation.next_token_rows(self.model, torch.tensor([ids], device=self.device), n, cfg,
                                                            token))
        return {'rows': [{'rank': rank, 'id': i, 'text': self.tokenizer.decode([i]),
                          'label': generation.token_label(self.tokenizer, i), 'probability': p,
                          'log_probability': log_p if math.isfinite(log_p) else None, 'drawn': drawn}
                         for rank, i, p, log_p, drawn in rows]}

    def notes(self, body):
        self.check_music()
        steps = self.tokenizer.steps_per_quarter
        return {'steps_per_quarter': steps, 'notes': [n._asdict() for n in self.tokenizer.to_notes(self.token_ids(body))]}

    def midi(self, body):
        self.check_music()
        notes = self.tokenizer.to_notes(self.token_ids(body))
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, 'sample.mid')
            music.write_midi(notes, path, self.tokenizer.steps_per_quarter)
            with open(path, 'rb') as f:
                return f.read()

    def check_music(self):
        if self.tokenizer.kind != 'midi':
            raise RequestError(422, f"this checkpoint's tokenizer is {self.tokenizer.kind}, not music")


def make_app(playground):
    """The web application: the page's files and the API routes over playground."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title='playground', docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(RequestError)
    async def refused(request, error):
        return JSONResponse({'error': str(error)}, status_code=error.status)

    for route, (name, media_type) in PAGE_FILES.items():
        app.add_api_route(route, lambda name=name, media_type=media_type: FileResponse(
            os.path.join(PAGE_DIR, name), media_type=media_type, headers={'Cache-Control': 'no-cache'}))

    async def body_of(request):
        try:
            body = json.loads(await request.body() or b'{}')
        except ValueError:
            raise RequestError(400, "the request body must be JSON")
        if not isinstance(body, dict):
            raise RequestError(400, "the request body must be a JSON object")
        return body

    @app.get('/api/model')
    def model():
        return playground.describe()

    @app.post('/api/generate')
    async def generate(request: Request):
        events = playground.generate(await body_of(request))
        lines = (''.join(f"event: {event}\ndata: {json.dumps(data)}\n\n" for event, data in ready) for ready in events)
        return StreamingResponse(lines, media_type='text/event-stream', headers={'Cache-Control': 'no-cache'})

    @app.post('/api/next')
    async def next_tokens(request: Request):
        return await run_in_threadpool(playground.next_tokens, await body_of(request))

    @app.post('/api/notes')
    async def notes(request: Request):
        return playground.notes(await body_of(request))

    @app.post('/api/midi')
    async def midi(request: Request):
        return Response(playground.midi(await body_of(request)), media_type='audio/midi',
                        headers={'Content-Disposition': 'attachment; filename="sample.mid"'})

    return app


class Background:
    """playground's app served from a thread of this process, for tests and tools: .url, and .close()."""

    def __init__(self, playground, port, host='127.0.0.1'):
        import uvicorn
        self.url = f'http://{host}:{port}'
        self.server = uvicorn.Server(uvicorn.Config(make_app(playground), host=host, port=port, log_level='warning',
                                                    lifespan='off'))  # the app has no start-up or shut-down work
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the playground did not start on {self.url}")
            time.sleep(0.05)

    def close(self, force=False):
        """Stop serving; force: without waiting for open streams to finish."""
        self.server.should_exit = True
        self.server.force_exit = force
        self.thread.join(timeout=10)


def check_port(host, port):
    """A one-line error now if host:port cannot be listened on, rather than a server that fails to start."""
    try:
        with socket.create_server((host, port)):
            pass
    except OSError as error:
        raise UserError(f"cannot listen on {host}:{port} ({error.strerror}): give another --port, or stop what"
                        f" uses it")
