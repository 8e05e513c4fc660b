"""Train the same model several ways and compare the runs on the same held-out documents with the same metric.

    python ablate.py config/train_akjv_char.py --what=windowing           # every windowing strategy, AKJV
    python ablate.py config/train_akjv.py --windowings=random,packed --target_tokens=200000
    python ablate.py config/train_tinystories_cpu.py --what=data_size     # 20K / 200K / all TinyStories stories
    python ablate.py config/train_akjv_char.py --what=dtype --max_iters=300  # float32 against bfloat16 autocast
    python ablate.py config/train_akjv_char.py --what=tokenizer --time_budget=300   # 5 minutes per tokenizer

The tokenizer ablation trains one run per --tokenizers entry, each on its own data directory: the config's
data_dir with its tokenizer part replaced (data/akjv_char -> data/akjv_word, data/akjv_bpe1k, data/akjv_bpe for
GPT-2's ...), prepared by prepare.py here when missing. Every directory holds the same documents split the same
way, so every run is scored on the same held-out text, each in its own tokens. With --same_context (the default)
each run's block_size covers the config's context in characters (block_size x the config's characters per token,
divided by the run's), so every run sees the same text per window and per batch, whatever a token is.

--time_budget=SECONDS gives every run the same wall clock instead of the same tokens: each trains with train.py's
--max_time (start-up, evaluations and checkpoints inside the budget, the learning-rate schedule laid out over
it), pausing at each of its --points to be scored and resuming the same budget.

Every run is train.py's own loop (training.train) from the same seed, so from the same initial weights, and learns
the same number of real target tokens: padding and pairs across a document boundary do not count, so a
windowing that pads runs more iterations, with the config's learning-rate schedule stretched to fit them
(warmup the same share of every run, the cosine ending at its last iteration). One metric scores every run:
batching.evaluation_windows cuts each held-out document into block_size chunks, and the loss is the mean over
every real target of every document (nats per target), and the same total in bits per character of those
documents. A run is scored at --points evenly spaced points of its training; between them it resumes its own
checkpoint, which continues exactly, so the curve is the one an uninterrupted run would draw.

Writes to <out_dir>-ablate-<what>/ (or --ablation_dir): results.md (the table), results.json, ablation.png
(bits per character against target tokens and against training time), and one train.py out_dir per run.
A run whose directory holds the results of the same settings is not trained again.
"""
import concurrent.futures
import contextlib
import dataclasses
import json
import multiprocessing
import os
import statistics
import time

import torch

import configurator
from configurator import UserError, listed, option, parse, run
from model import recipe_changes
from slm import batching, checkpoint, corpus, evaluation, report, runtime, storage, training


DATA_SIZE_DIRS = 'data/tinystories_20k,data/tinystories_200k,data/tinystories'
UNKNOWN_WINDOWINGS = '--windowings: unknown {bad}; choose from {choices}'
DATA_SIZE_PREPARE = {'data/tinystories_20k': ' --max_docs=20000', 'data/tinystories_200k': ' --max_docs=200000'}
TOKENIZERS = 'char,word,bpe512,bpe1k,bpe4k,bpe8k,bpe'
WHATS = ('windowing', 'data_size', 'dtype', 'tokenizer', 'recipe', 'sweep')
# The recipe ablation's changes from the GPT-2 recipe (training.GPT2), each the one option it sets (model.py's
# recipe options declare theirs), Muon and the warmdown schedule. Two that set one option (relu2, swiglu) replace
# each other.
RECIPE_CHANGES = {**recipe_changes(), 'muon': ('optimizer', 'muon'), 'warmdown': ('lr_schedule', 'warmdown')}


@dataclasses.dataclass
class AblateConfig(training.TrainConfig):
    what: str = option('windowing', choices=WHATS)  # what differs between the runs: a run per --windowings,
    #                               --data_dirs, --dtypes, --tokenizers, recipe change (--recipe_changes) or --sweep
    windowings: str = option('', choices=('',), some_of=batching.WINDOWINGS, error=UNKNOWN_WINDOWINGS)
    #                               windowing: strategies to compare, comma-separated ('' = all that suit a model)
    data_dirs: str = DATA_SIZE_DIRS  # data_size: prepared directories, scored on the first one's val split
    dtypes: str = option('float32,bfloat16', some_of=('auto', runtime.DTYPES))  # dtype: autocast dtypes to
    #                               compare, comma-separated (auto = train.py's default here)
    target_tokens: int = option(0, low=0)  # real target tokens per run (0 = the config's max_iters x tokens
    #                               per iteration)
    points: int = option(4, low=1)  # scores per run, evenly spaced in its training, the last at its end
    eval_documents: int = option(0, low=0)  # score on the first N held-out documents (0 = all of them)
    ablation_dir: str = ''        # where the results and runs go ('' = <out_dir>-ablate-<what>)
    tokenizers: str = TOKENIZERS  # tokenizer: data_dir suffixes (bpe4k: learned, 4,096 ids; bpe: GPT-2's)
    same_context: bool = True     # tokenizer: block_size covers the config's context in characters (False: same)
    prepare_args: str = ''        # tokenizer: more prepare.py options for the directories it prepares (--source=...)
    time_budget: float = option(0.0, low=0)  # seconds of training per run, start-up included (0 = the same
    #                               target tokens)
    recipe_base: str = option('', choices=('',), some_of=tuple(RECIPE_CHANGES))  # recipe:
    #                               the changes from the GPT-2 recipe that make the base run, comma-separated
    recipe_changes: str = option(','.join(RECIPE_CHANGES), choices=('',), some_of=tuple(RECIPE_CHANGES))  # recipe:
    #                               a run per change, each toggled alone in the base (added, or removed from it)
    sweep: str = ''               # sweep: KEY=V1,V2,... a run per value of one train.py option
    seeds: int = option(1, low=1)  # runs per variant, from --seed up: the table gives their mean and spread
    jobs: int = option(1, low=1)  # runs at once, each in a process of its own on its own share of the CPU cores
    report: bool = False          # then evaluate.py's report of the best variant's run against the worst's, in the
    #                               best run's out_dir/report-vs-<worst> (a few minutes more; see docs/evaluation.md)


@dataclasses.dataclass
class Variant:
    name: str       # the table's row label (the runs of a variant's seeds share it)
    overrides: dict  # what this run changes in the training config
    context_chars: float | None = None  # tokenizer, same context: block_size covers this many characters
    directory: str = ''  # the run's directory in the ablation's ('' = its name)


def variants(cfg):
    """The runs of the ablation, checked: each variant, once per seed with --seeds above 1."""
    variant_list = what_varies(cfg)
    if cfg.seeds == 1:
        return variant_list
    return [dataclasses.replace(v, overrides={**v.overrides, 'seed': seed},
                                directory=f"{v.directory or v.name}-seed{seed}")
            for v in variant_list for seed in range(cfg.seed, cfg.seed + cfg.seeds)]


def what_varies(cfg):
    """The variants of the ablation: one per windowing strategy, data directory, dtype, tokenizer, recipe change
    or swept value."""
    if cfg.what == 'windowing':
        # streams is the LSTM's TBPTT layout: for a GPT, strided windows in a fixed order, so left out by default
        everything = [w for w in batching.WINDOWINGS if cfg.model_type == 'lstm' or w != 'streams']
        names = listed(cfg.windowings) or everything
        return [Variant(w, {'windowing': w}) for w in names]
    if cfg.what == 'data_size':
        dirs = listed(cfg.data_dirs)
        for d in dirs:
            if not os.path.exists(os.path.join(d, storage.META)):
                raise UserError(f"{d} is not prepared: the data-size ablation needs {', '.join(dirs)}; run"
                                f" `python prepare.py {d}{DATA_SIZE_PREPARE.get(os.path.normpath(d), '')}` first")
        return [Variant(os.path.basename(os.path.normpath(d)), {'data_dir': d}) for d in dirs]
    if cfg.what == 'dtype':
        names = listed(cfg.dtypes)
        for name in names:
            runtime.resolve_dtype(name, 'cpu')  # raises for an unknown one
        return [Variant(name, {'dtype': name}) for name in names]
    if cfg.what == 'tokenizer':
        names = listed(cfg.tokenizers)
        bad = [t for t in names if not corpus.tokenizer_named(t) or t in ('midi', 'learned_bpe')]
        if bad or not names:
            raise UserError(f"--tokenizers: {', '.join(bad) or 'none given'}: give char, word, bpe (GPT-2's) or"
                            f" bpeN / bpeNk (learned, N or N x 1,024 ids), comma-separated")
        context = context_chars(cfg)
        return [Variant(name, {'data_dir': tokenizer_dir(cfg, name)}, context) for name in names]
    if cfg.what == 'recipe':
        return recipe_variants(cfg)
    if cfg.what == 'sweep':
        key, is_set, values = cfg.sweep.partition('=')
        if not is_set or not listed(values):
            raise UserError(f"--sweep={cfg.sweep!r} must be KEY=V1,V2,...: a train.py option and its values,"
                            f" e.g. --sweep=learning_rate=1e-3,3e-3")
        return [Variant(f'{key}={text}', {key: configurator.parse_value(training.TrainConfig, key, text)})
                for text in listed(values)]
    raise UserError(f"--what={cfg.what} must be one of {', '.join(WHATS)}")


def recipe_variants(cfg):
    """GPT-2's recipe (config/recipe_gpt2.py); the base, that recipe with --recipe_base's changes (when it has
    any); and the base with each of --recipe_changes toggled alone: added, or removed where the base has it. A
    change that sets the option of one in the base replaces it (relu2 for swiglu)."""
    if cfg.model_type != 'gpt':
        raise UserError(f"--what=recipe compares the GPT's recipes; --model_type={cfg.model_type} has none: give"
                        f" --model_type=gpt")
    base = listed(cfg.recipe_base)
    for change in base:
        rivals = [c for c in base if RECIPE_CHANGES[c][0] == RECIPE_CHANGES[change][0]]
        if len(rivals) > 1:
            raise UserError(f"--recipe_base: {' and '.join(rivals)} both set {RECIPE_CHANGES[change][0]}: keep one")
    gpt2 = training.GPT2

    def variant(name, directory, changes):
        return Variant(name, {**gpt2, **dict(RECIPE_CHANGES[c] for c in changes)}, directory=directory)

    runs = [variant('gpt2', 'gpt2', [])]
    if base:
        runs.append(variant('+'.join(base), 'base', base))
    for change in listed(cfg.recipe_changes):
        replaced = [c for c in base if RECIPE_CHANGES[c][0] == RECIPE_CHANGES[change][0]]
        if change in base:
            runs.append(variant(f'- {change}', f'drop_{change}', [c for c in base if c != change]))
        elif replaced:
            runs.append(variant(f'{change} for {replaced[0]}', f'{change}_for_{replaced[0]}',
                                [change if c == replaced[0] else c for c in base]))
        else:
            runs.append(variant(f'+ {change}', f'add_{change}', [*base, change]))
    return runs


def tokenizer_dir(cfg, name):
    """The config's data directory with its tokenizer part replaced by name, prepared if it is missing."""
    data_dir = corpus.with_tokenizer(cfg.data_dir, name)
    prepared(cfg, data_dir)
    return data_dir


def prepared(cfg, data_dir):
    """data_dir, prepared by prepare.py (with --prepare_args) unless it is already."""
    if not os.path.exists(os.path.join(data_dir, storage.META)):
        argv = [data_dir, *cfg.prepare_args.split()]
        print(f"preparing: python prepare.py {' '.join(argv)}")
        corpus.prepare_dir(corpus.resolve(parse(corpus.PrepareConfig, argv)))
    return data_dir


def chars_per_token(meta, split='train'):
    return meta['splits'][split]['chars'] / meta['splits'][split]['tokens']


def context_chars(cfg):
    """Characters of text the config's block_size covers in its own data (None: --same_context=False)."""
    if not cfg.same_context:
        return None
    return cfg.block_size * chars_per_token(storage.load_meta(prepared(cfg, cfg.data_dir)))


SPLIT_OPTIONS = ('source', 'input', 'text_column', 'booked', 'val_fraction', 'seed')  # prepare's, that pick val


def check_held_out(cfg, variant_list):
    """The data directory the runs are scored on, after checking that they all hold the same held-out documents:
    the same val.bin (and tokenizer), or for the tokenizer ablation the same documents split the same way."""
    data_dirs = [v.overrides.get('data_dir', cfg.data_dir) for v in variant_list]
    metas = [storage.load_meta(d) for d in data_dirs]
    first = metas[0]
    for d, meta in zip(data_dirs[1:], metas[1:]):
        if cfg.what == 'tokenizer':
            same = (all(meta['options'].get(k) == first['options'].get(k) for k in SPLIT_OPTIONS) and
                    all(meta['splits']['val'][k] == first['splits']['val'][k] for k in ('documents', 'chars')))
            if not same:
                raise UserError(f"{d} and {data_dirs[0]} hold different held-out documents: prepare both from one"
                                f" source with the same --seed and --val_fraction")
        elif meta['tokenizer'] != first['tokenizer'] or meta['files']['val.bin'] != first['files']['val.bin']:
            raise UserError(f"{d} and {data_dirs[0]} hold different held-out documents or tokenizers: compare"
                            f" directories prepared from one source with one tokenizer (--max_docs only)")
    return data_dirs[0]


def score(out_dir, documents, chars, cfg):
    """Nats per real target and bits per character of out_dir's latest checkpoint on the held-out documents
    (evaluation.held_out_loss), the model's parameters and the checkpoint's iteration."""
    device = runtime.resolve_device(cfg.device)
    ckpt = checkpoint.load(os.path.join(out_dir, checkpoint.LATEST))
    model = checkpoint.restore_model(ckpt).to(device)
    loss = evaluation.held_out_loss(model, documents, cfg.batch_size, device)
    parameters = sum(p.numel() for p in model.parameters())
    return loss, evaluation.bits_per_unit(loss, float(documents.pairs.sum()), chars), parameters, ckpt['iter_num']


def run_config(cfg, variant):
    """The checked train.py config of one variant's run."""
    train_fields = {f.name for f in dataclasses.fields(training.TrainConfig)}
    run_cfg = training.TrainConfig(**{k: v for k, v in dataclasses.asdict(cfg).items() if k in train_fields})
    run_cfg = dataclasses.replace(run_cfg, **variant.overrides, init_from='scratch', max_time='',  # --time_budget
                                  out_dir=os.path.join(cfg.ablation_dir, variant.directory or variant.name))
    if variant.context_chars:
        meta = storage.load_meta(run_cfg.data_dir)
        run_cfg = dataclasses.replace(run_cfg, block_size=max(1, round(variant.context_chars / chars_per_token(meta))))
    training.check_config(run_cfg)
    return run_cfg


def run_variant(cfg, variant, budget):
    """Train one variant to the budget of real target tokens (or of seconds), scoring it at cfg.points points."""
    run_cfg = run_config(cfg, variant)
    run_dir = run_cfg.out_dir
    meta = storage.load_meta(run_cfg.data_dir)
    documents, chars = evaluation.held_out(run_cfg.data_dir, cfg.eval_documents)
    share = training.make_batches(run_cfg, training.open_documents(run_cfg.data_dir, 'train', meta), 'train',
                               run_cfg.seed).target_fraction
    tokens_per_iter = run_cfg.batch_size * run_cfg.block_size * run_cfg.gradient_accumulation_steps
    settings = {'variant': variant.name, 'config': dataclasses.asdict(run_cfg), 'budget': budget,
                'time_budget': cfg.time_budget, 'scored_on': documents.starts.size, 'points': cfg.points}
    saved = os.path.join(run_dir, 'ablation.json')
    if os.path.exists(saved):
        with open(saved) as f:
            result = json.load(f)
        if result['settings'] == settings:
            print(f"{variant.name}: already done in {run_dir}")
            return result
    if cfg.time_budget:  # train.py's --max_time: evaluations only at the start (they time the last) and the end
        iters = None
        run_cfg = dataclasses.replace(run_cfg, max_time=f'{cfg.time_budget:g}s', eval_interval=2**62,
                                      lr_decay_iters=0)
    else:
        # Every run gets the config's schedule shape: warmup for the same share of its iterations as the config's,
        # then the cosine down to min_lr at its own end, whatever iteration a segment stops at.
        iters = max(cfg.points, round(budget / (tokens_per_iter * share)))
        run_cfg = dataclasses.replace(run_cfg, max_iters=iters, warmup_iters=round(cfg.warmup_iters * iters /
                                      cfg.max_iters), lr_decay_iters=iters, eval_interval=iters)
    train_chars_per_target = chars_per_token(meta)
    curve, train_s = [], 0.0
    for k in range(1, cfg.points + 1):
        started = time.perf_counter()
        segment = dataclasses.replace(run_cfg, init_from='resume' if k > 1 else 'scratch', overwrite=True)
        if iters is None:  # a run of other settings, or cut short
            training.train(segment, pause_at=cfg.time_budget * k / cfg.points if k < cfg.points else None)
        else:
            training.train(dataclasses.replace(segment, max_iters=round(iters * k / cfg.points)))
        train_s += time.perf_counter() - started
        loss, bits_per_char, parameters, stop = score(run_dir, documents, chars, cfg)
        curve.append({'iter': stop, 'target_tokens': stop * tokens_per_iter * share, 'train_s': train_s,
                      'train_chars': stop * tokens_per_iter * share * train_chars_per_target,
                      'val_loss': loss, 'val_bits_per_char': bits_per_char})
        of = f'/{iters}' if iters else ''  # with --time_budget the last iteration is not known before it
        print(f"{variant.name}: iteration {stop}{of}, {curve[-1]['target_tokens']:,.0f} target tokens:"
              f" val loss {loss:.4f} per target, {bits_per_char:.4f} bits/char")
    iters = stop
    result = {'settings': settings, 'name': variant.name, 'seed': run_cfg.seed, 'iters': iters, 'target_share': share,
              'positions': iters * tokens_per_iter, 'target_tokens': iters * tokens_per_iter * share,
              'train_s': train_s, 'tokens_per_s': iters * tokens_per_iter / train_s,
              'block_size': run_cfg.block_size, 'parameters': parameters, 'vocab_size': meta['vocab_size'],
              'chars_per_token': meta['splits']['val']['chars'] / meta['splits']['val']['tokens'],
              **{k: curve[-1][k] for k in ('val_loss', 'val_bits_per_char')}, 'curve': curve}
    with storage.atomic_write(saved, 'w') as f:
        json.dump(result, f, indent=1)
    return result


def in_parallel(cfg, variant_list, budget):
    """run_variant for every variant, cfg.jobs at a time, each in a process of its own pinned to its own share of
    this process's CPUs (with that many torch threads), so that runs at once do not slow each other more than
    sharing the machine's memory does. Each run's output goes to <its directory>.log; a line here as each ends."""
    cpus = sorted(os.sched_getaffinity(0))
    if cfg.jobs > len(cpus):
        raise UserError(f"--jobs={cfg.jobs}: this process may use {len(cpus)} CPUs, so at most {len(cpus)} runs"
                        f" can each have one: give --jobs={len(cpus)} or fewer")
    share = len(cpus) // cfg.jobs
    context = multiprocessing.get_context('spawn')  # not fork: torch's threads do not survive a fork
    shares = context.Queue()
    for j in range(cfg.jobs):
        shares.put(cpus[j * share:(j + 1) * share])
    with concurrent.futures.ProcessPoolExecutor(cfg.jobs, mp_context=context, initializer=pin,
                                                initargs=(shares,)) as pool:
        futures = {pool.submit(run_logged, cfg, v, budget): v for v in variant_list}
        for future in concurrent.futures.as_completed(futures):
            r, v = future.result(), futures[future]
            print(f"{v.directory or v.name}: {r['iters']:,} iterations in {r['train_s']:.0f} s, val loss"
                  f" {r['val_loss']:.4f} per target, {r['val_bits_per_char']:.4f} bits/char")
        return [future.result() for future in futures]


def pin(shares):
    """A worker of in_parallel: run on one share of the CPUs, with a torch thread per CPU of it."""
    cpus = shares.get()
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(len(cpus))


def run_logged(cfg, variant, budget):
    """run_variant with its output in <the run's directory>.log, and train.py's threads those of its share."""
    cfg = dataclasses.replace(cfg, threads=cfg.threads or torch.get_num_threads())
    log = os.path.join(cfg.ablation_dir, f"{variant.directory or variant.name}.log")
    with open(log, 'w') as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        return run_variant(cfg, variant, budget)


def summary(results):
    """Each variant's runs (its seeds) summed up: the mean, spread (sample standard deviation), lowest and
    highest val bits per character, and their mean iterations, training time and tokens/s."""
    variants = {}
    for r in results:
        variants.setdefault(r['name'], []).append(r)
    rows = []
    for name, runs in variants.items():
        bits = [r['val_bits_per_char'] for r in runs]
        rows.append({'name': name, 'runs': len(runs), 'seeds': [r['seed'] for r in runs],
                     'mean': statistics.mean(bits), 'std': statistics.stdev(bits) if len(bits) > 1 else 0.0,
                     'min': min(bits), 'max': max(bits), 'parameters': runs[0]['parameters'],
                     **{k: statistics.mean(r[k] for r in runs) for k in ('iters', 'train_s', 'tokens_per_s')}})
    return rows


def seeds_table(results, what):
    """The variants (each the mean of its seeds' runs) as a markdown table: spread, range, and the difference of
    each mean from the first variant's; the best mean in bold."""
    rows = summary(results)
    best = min(r['mean'] for r in rows)
    lines = [f"| {what} | runs | parameters | iterations | train time | tokens/s | val bits/char (mean) | spread (sd)"
             f" | lowest - highest | vs {rows[0]['name']} |", '|---|' + '---:|' * 9]
    for r in rows:
        mean = f"{r['mean']:.4f}"
        lines.append(f"| `{r['name']}` | {r['runs']} | {r['parameters']:,} | {r['iters']:,.0f} | {r['train_s']:.0f} s"
                     f" | {r['tokens_per_s']:,.0f} | {f'**{mean}**' if r['mean'] == best else mean} | {r['std']:.4f} |"
                     f" {r['min']:.4f} - {r['max']:.4f} | {r['mean'] - rows[0]['mean']:+.4f} |")
    return '\n'.join(lines) + '\n'


def seeds_plot(results, path, title, what):
    """Left: each variant's curve, the mean of its seeds' bits per character against their mean training time.
    Right: each variant's final bits per character, a dot per seed and a bar at the mean, the best at the top, and
    a dashed line at the first variant's mean."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = summary(results)
    fig, (curves, finals) = plt.subplots(1, 2, figsize=(11, 0.9 + 0.32 * max(8, len(rows))),
                                         gridspec_kw={'width_ratios': [1, 1.1]})
    for row in rows:
        runs = [r for r in results if r['name'] == row['name']]
        points = zip(*(r['curve'] for r in runs))
        means = [(statistics.mean(p['train_s'] for p in ps) / 60, statistics.mean(p['val_bits_per_char'] for p in ps))
                 for ps in points]
        curves.plot(*zip(*means), 'o-', label=row['name'], alpha=0.8, markersize=3)
    curves.set_xlabel('training time (minutes, this machine)')
    curves.set_ylabel('held-out bits per character (mean of the seeds)')
    curves.legend(fontsize=7)
    ordered = sorted(rows, key=lambda r: -r['mean'])
    for y, row in enumerate(ordered):
        finals.barh(y, row['mean'] - ordered[-1]['min'] + 0.02, left=ordered[-1]['min'] - 0.02, color='C0', alpha=0.25)
        bits = [r['val_bits_per_char'] for r in results if r['name'] == row['name']]
        finals.plot(bits, [y] * len(bits), 'o', color='C0', markersize=4)
    finals.axvline(rows[0]['mean'], color='gray', linestyle='--', linewidth=1, label=f"{rows[0]['name']}'s mean")
    finals.legend(fontsize=7, loc='lower right')
    finals.set_yticks(range(len(ordered)), [r['name'] for r in ordered], fontsize=8)
    finals.set_xlabel('held-out bits per character at the end (dots: seeds; bar: their mean)')
    for ax in (curves, finals):
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with storage.atomic_write(path) as f:
        fig.savefig(f, format='png', dpi=80)
    plt.close(fig)


def table(results, what):
    """The results as a markdown table, best bits per character in bold; the tokenizer ablation also gives each
    run's vocabulary, characters per token, block_size, parameters and tokens/s."""
    best = min(r['val_bits_per_char'] for r in results)
    is_tokenizer = what == 'tokenizer'
    extra = " vocab | chars/token | block | parameters | tokens/s |" if is_tokenizer else ""
    lines = [f"| {what} |{extra} iterations | target tokens | positions | targets | train time |"
             f" val loss (nats/target) | val bits/char |", '|---|' + '---:|' * (12 if is_tokenizer else 7)]
    for r in results:
        bits = f"{r['val_bits_per_char']:.4f}"
        extra = (f" {r['vocab_size']:,} | {r['chars_per_token']:.2f} | {r['block_size']} | {r['parameters']:,} |"
                 f" {r['tokens_per_s']:,.0f} |" if is_tokenizer else "")
        lines.append(f"| `{r['name']}` |{extra} {r['iters']:,} | {r['target_tokens']:,.0f} | {r['positions']:,} |"
                     f" {r['target_share']:.0%} | {r['train_s']:.0f} s | {r['val_loss']:.4f} |"
                     f" {f'**{bits}**' if r['val_bits_per_char'] == best else bits} |")
    return '\n'.join(lines) + '\n'


def plot(results, path, title, what):
    """Bits per character against what was learned (target tokens; the tokenizer ablation: characters, its runs'
    tokens differ) and against training time, one line per run."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    learned = 'train_chars' if what == 'tokenizer' else 'target_tokens'
    for r in results:
        bits = [p['val_bits_per_char'] for p in r['curve']]
        axes[0].plot([p[learned] / 1e6 for p in r['curve']], bits, 'o-', label=r['name'], alpha=0.85)
        axes[1].plot([p['train_s'] / 60 for p in r['curve']], bits, 'o-', label=r['name'], alpha=0.85)
    axes[0].set_xlabel('training characters read (millions)' if what == 'tokenizer' else
                       'target tokens learned (millions)')
    axes[1].set_xlabel('training time (minutes, this machine)')
    axes[0].set_ylabel('held-out bits per character')
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with storage.atomic_write(path) as f:
        fig.savefig(f, format='png', dpi=80)
    plt.close(fig)


def ablate(cfg):
    """Run every variant; write and return the results."""
    configurator.check(cfg)
    variant_list = variants(cfg)
    cfg = dataclasses.replace(cfg, ablation_dir=cfg.ablation_dir or f"{cfg.out_dir}-ablate-{cfg.what}")
    scored_on = check_held_out(cfg, variant_list)
    documents, chars = evaluation.held_out(scored_on, cfg.eval_documents)
    budget = cfg.target_tokens or cfg.max_iters * cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    each = f"{cfg.time_budget:g} s of training" if cfg.time_budget else f"{budget:,} target tokens"
    os.makedirs(cfg.ablation_dir, exist_ok=True)
    print(f"ablation of {cfg.what}: {len(variant_list)} runs of {each} each, scored on"
          f" {documents.starts.size:,} held-out documents of {scored_on} ({int(documents.pairs.sum()):,} targets,"
          f" {chars:,} characters)")
    for v in variant_list:  # every run's config is checked before the first trains
        run_config(cfg, v)
    results = (in_parallel(cfg, variant_list, budget) if cfg.jobs > 1 else
               [run_variant(cfg, v, budget) for v in variant_list])
    context = (f", context {variant_list[0].context_chars:.0f} characters" if variant_list[0].context_chars else
               f", block {cfg.block_size}")
    seeds = f", {cfg.seeds} seeds" if cfg.seeds > 1 else ""
    title = (f"{cfg.what} ablation: {cfg.model_type} {cfg.n_layer}x{cfg.n_embd}{context}, {each} per run{seeds};"
             f" scored on {scored_on} val")
    markdown = table(results, cfg.what) if cfg.seeds == 1 else seeds_table(results, cfg.what)
    with storage.atomic_write(os.path.join(cfg.ablation_dir, 'results.md'), 'w') as f:
        f.write(f"{title}\n\n{markdown}")
    with storage.atomic_write(os.path.join(cfg.ablation_dir, 'results.json'), 'w') as f:
        json.dump({'config': dataclasses.asdict(cfg), 'scored_on': scored_on, 'documents': documents.starts.size,
                   'targets': int(documents.pairs.sum()), 'chars': chars, 'results': results,
                   'variants': summary(results)}, f, indent=1)
    (plot if cfg.seeds == 1 else seeds_plot)(results, os.path.join(cfg.ablation_dir, 'ablation.png'), title, cfg.what)
    print(f"\n{markdown}\nwrote {cfg.ablation_dir}/results.md, results.json, ablation.png")
    if cfg.report and len(summary(results)) > 1:
        best_against_worst(cfg, results)
    return results


def best_against_worst(cfg, results):
    """evaluate.py's report of the best variant's run (its first seed's) against the worst variant's, each on its
    own held-out data, as evaluate.py reads a run (best.pt, else ckpt.pt); results.md links it."""
    rows = sorted(summary(results), key=lambda r: r['mean'])
    best, worst = ([r for r in results if r['name'] == row['name']][0] for row in (rows[0], rows[-1]))
    best_dir, worst_dir = best['settings']['config']['out_dir'], worst['settings']['config']['out_dir']
    print(f"\nreport of the best run, {best['name']}, against the worst, {worst['name']}:")
    path, _ = report.evaluate(report.EvaluateConfig(out_dir=best_dir, compare=worst_dir, documents=cfg.eval_documents,
                                                    device=cfg.device, seed=cfg.seed))
    with open(os.path.join(cfg.ablation_dir, 'results.md'), 'a') as f:
        f.write(f"\nThe best run ({best['name']}) against the worst ({worst['name']}), evaluate.py's report:"
                f" [{os.path.relpath(path, cfg.ablation_dir)}]({os.path.relpath(path, cfg.ablation_dir)})\n")


def main(argv=None):
    return ablate(parse(AblateConfig, argv))


if __name__ == '__main__':
    run(main)
