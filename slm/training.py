"""Training: the run (Run, its RunState, the loop over its jobs), its config (TrainConfig: train.py's options,
which ablate.py and bench.py extend), the recipe files, and the config's checks. train.py is its command line.
"""
import contextlib
import dataclasses
import math
import os
import signal
import sys
import time

import torch
from tqdm import tqdm

import configurator
from configurator import UNKNOWN, UserError, option
from model import ModelArgs, ModelOptions, build_model, gpt2_recipe, recipe_fields
from slm import batching, budget, checkpoint, distributed, probe, runtime, storage
from slm import tokenizer as tok
from slm.checkpoint import seed_everything
from slm.evaluation import EVAL_SEED, bits_per_unit, estimate_loss, text_unit
from slm.distributed import micro_steps_per_process
from slm.loss import BatchLoss, micro_batch_rows
from slm.optim import LR_SCHEDULES, OPTIMIZERS, learning_rate, make_optimizer, resolve_optimizer, set_learning_rate, train_step
from slm.reliability import (MAX_SKIPPED_IN_A_ROW, OutDirLock, StepLosses, StopOnSignal, load_resumable,
                             prepare_out_dir, refuse_to_replace, resume_command, weights_finite, write_error)
from slm.trainlog import MetricsLog


TIME_SCHEDULE_STEPS = 1_000_000  # --max_time: the schedule is read at this many points of the budget
INIT_FROM = ('scratch', 'resume')  # or a directory: see TrainConfig.init_from
# what --init_from=DIR sets, whatever the config says: every model option but those a fine-tune chooses (dropout,
# and block_size: a window of at most the directory's positions)
PRETRAINED_SHAPE = tuple(f.name for f in dataclasses.fields(ModelOptions) if f.name not in ('dropout', 'block_size'))
# The GPT's recipe: model.py's recipe options and the optimizer. A recipe file (config/recipe_*.py) sets each: GPT-2's
# (model.gpt2_recipe and AdamW), and every modern change at once (bench.py times them both).
RECIPE = (*recipe_fields(), 'optimizer', 'lr_schedule')
GPT2 = {**gpt2_recipe(), 'optimizer': 'adamw', 'lr_schedule': 'cosine'}  # the recipe of GPT-2 (2019), as config/recipe_gpt2.py sets it
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository: its config/ files
GPT2_RECIPE = os.path.join(ROOT, 'config', 'recipe_gpt2.py')
MODERN_RECIPE = os.path.join(ROOT, 'config', 'recipe_modern.py')


@dataclasses.dataclass
class RunFiles:
    # input and output
    data_dir: str = 'data/akjv'   # a directory written by prepare.py
    out_dir: str = 'out'          # checkpoints, metrics.jsonl and loss.png go here
    init_from: str = 'scratch'    # scratch, resume (continue from out_dir/ckpt.pt, or best.pt where there is no
    #                               ckpt.pt) or a Hugging Face model directory of GPT-2's architecture to start
    #                               from (its shape is used; the data's tokenizer must be its vocabulary's)
    overwrite: bool = False       # scratch into an out_dir that holds a checkpoint: replace it (at the first save)
    # the model: model.ModelOptions, whose fields follow these (on resume the checkpoint's shape is used, whatever
    # the config says; --init_from=DIR takes the directory's)


@dataclasses.dataclass
class TrainConfig(ModelOptions, RunFiles):
    """train.py's options: RunFiles', then model.ModelOptions' (each model option is declared there), then these."""
    windowing: str = option('auto', choices=('auto', batching.WINDOWINGS), error=UNKNOWN)  # how batches are cut
    #                               (slm/batching.py); auto: random (GPT), streams (LSTM)
    num_workers: int = option(0, low=0)  # sliding/strided: DataLoader worker processes (0 = in this process)
    # batches and optimization
    batch_size: int = option(32, low=1)  # windows per micro-step
    gradient_accumulation_steps: int = option(1, low=1)  # micro-steps per optimizer step
    max_iters: int = option(2000, low=0)  # optimizer steps in total (0: evaluate and save the initial model)
    max_time: str = ''            # train for this much wall clock instead (5min, 300s, 2h; '' = max_iters): start-up,
    #                               evaluations and the last checkpoint included, the learning-rate schedule laid
    #                               out over it; resumes continue the budget; --max_iters on the command line wins
    learning_rate: float = option(1e-3, low=0, low_open=True)  # peak learning rate, reached after warmup
    min_lr: float = option(1e-4, low=0)  # floor of the cosine decay
    warmup_iters: int = option(100, low=0)  # linear warmup steps
    lr_decay_iters: int = option(0, low=0)  # step where the cosine reaches min_lr (0 = max_iters)
    lr_schedule: str = option('cosine', choices=LR_SCHEDULES)  # after warmup: cosine to min_lr, or warmdown:
    #                               flat, then linear to min_lr over the last --warmdown_frac of the steps
    warmdown_frac: float = option(0.5, low=0, high=1, low_open=True)  # warmdown: the share of the steps it takes
    weight_decay: float = option(0.1, low=0)  # AdamW decay, applied to weight matrices and embeddings only
    beta1: float = option(0.9, low=0, high=1, high_open=True)   # AdamW: decay rate of the gradient's mean
    beta2: float = option(0.99, low=0, high=1, high_open=True)  # AdamW: decay rate of its mean square
    grad_clip: float = option(1.0, low=0)  # clip the gradient norm to this (0 = off)
    optimizer: str = option('auto', choices=('auto', OPTIMIZERS))  # muon: torch.optim.Muon for the GPT's hidden
    #                               matrices, AdamW (at learning_rate) for embeddings, head and gains (slm/optim.py);
    #                               auto: muon for a GPT, adamw for an LSTM
    muon_lr: float = option(0.02, low=0, low_open=True)  # Muon's peak learning rate, on learning_rate's schedule
    muon_weight_decay: float = option(0.0, low=0)  # Muon's decoupled weight decay (x its learning rate per step)
    max_memory: str = 'auto'      # memory for one micro-batch's logits and activations, e.g. 2GB or 500MB: a
    #                               batch that needs more runs in micro-batches, the same step (auto: half of
    #                               what is free, at most 1GB on the CPU; see runtime.memory_budget)
    # evaluation and logging
    eval_interval: int = option(250, low=1)  # evaluate, checkpoint and plot every this many steps (and at the end)
    eval_tokens: int = option(81920, low=1)  # tokens per evaluation of each split (whole batches, at least one),
    #                               the same windows every time
    log_interval: int = option(10, low=1)  # steps between train-loss and tokens/s log lines
    # system
    device: str = option('auto', choices=runtime.DEVICES)  # auto: cuda if present, else mps, else cpu
    dtype: str = option('auto', choices=('auto', runtime.DTYPES))  # autocast (auto: bfloat16 on CUDA and on
    #                               CPUs with bfloat16 instructions, else float32; see slm/runtime.py)
    compile: bool | str = option('auto', choices=runtime.COMPILE)  # torch.compile the training step's model and
    #                               loss (auto: on CUDA)
    threads: int = option(0, low=0)  # CPU threads per process (0 = one per physical core, shared among processes)
    adamw: str = option('auto', choices=('auto', runtime.ADAMW_KERNELS))  # AdamW's kernels (auto: fused on
    #                               CPU and CUDA, else foreach)
    seed: int = option(1337, low=0, high=2**32 - 1)  # seeds the initial weights, the batches and dropout
    # reliability
    on_nonfinite: str = option('stop', choices=('stop', 'skip'))  # a step with a NaN/inf loss or gradient
    #                               stops the run, or is skipped
    verify_data: bool = True      # check the data files' sha256 against meta.json at start (about 1 s per GB)


def evaluate(model, documents, cfg, device, dtype, world=None, rows_per_chunk=None, name='eval'):
    """evaluation.estimate_loss of a split's documents, cut into windows as training cuts them (this process's
    share of them in a run of several)."""
    world = world or distributed.World()
    batches = make_batches(cfg, documents, 'evaluation', EVAL_SEED, world=world)
    return estimate_loss(model, batches, cfg, device, dtype, world, rows_per_chunk, name)


def make_batches(cfg, documents, name, seed, device='cpu', world=None):
    """The batch source cfg.windowing cuts from one split's documents (this process's share of it in a run of
    several); a split too small for it is a UserError."""
    world = world or distributed.World()
    try:
        return batching.make_batches(cfg.windowing, cfg.model_type, documents, cfg.batch_size, cfg.block_size,
                                     seed, world.rank, world.size, pin_memory=torch.device(device).type == 'cuda',
                                     num_workers=cfg.num_workers if name == 'train' else 0)
    except ValueError as error:
        raise UserError(f"the {name} split of {cfg.data_dir} is too small for --windowing={cfg.windowing}"
                        f" ({error}): lower --block_size/--batch_size or prepare with a larger --val_fraction")


def open_documents(data_dir, split, meta):
    """A prepared split as batching.Documents: its tokens, document spans and padding id."""
    return batching.Documents.from_split(*storage.open_split(data_dir, split, meta),
                                         meta['tokenizer']['special_ids'])


def resolved_windowing(config):
    """The windowing strategy a training config (as a dict) resolves to."""
    return batching.resolve_windowing(config.get('windowing', 'auto'), config['model_type'])


def recipe(path, base=None):
    """{option: value} of each RECIPE option as a config file (config/recipe_*.py, or any) sets it, over base's
    (default GPT-2's: an option the file does not name is GPT-2's): the recipe as overrides of any config."""
    values = configurator.config_file_values(TrainConfig, path)
    return {key: values.get(key, (base or GPT2)[key]) for key in RECIPE}


def check_config(cfg):
    """Each field's declared valid values, then what no one field can say alone."""
    configurator.check(cfg)
    if cfg.init_from not in INIT_FROM and not os.path.isdir(cfg.init_from):
        raise UserError(f"--init_from={cfg.init_from} must be scratch, resume or a Hugging Face model directory"
                        f" (none there)")
    if cfg.max_memory != 'auto':
        runtime.parse_size(cfg.max_memory)  # raises for a size it cannot read
    if cfg.max_time:
        budget.parse_duration(cfg.max_time)
    if cfg.model_type == 'gpt' and cfg.n_embd % cfg.n_head:
        raise UserError(f"--n_embd={cfg.n_embd} must be a multiple of --n_head={cfg.n_head}")
    if cfg.model_type == 'gpt' and cfg.rope and cfg.n_embd // cfg.n_head % 2:
        raise UserError(f"--rope=True rotates pairs of channels: n_embd / n_head = {cfg.n_embd // cfg.n_head}"
                        f" must be even")
    if cfg.optimizer == 'muon' and cfg.model_type != 'gpt':
        raise UserError("--optimizer=muon is for the GPT's hidden matrices: train the LSTM with --optimizer=adamw")


def check_tokenizer(data_dir, meta):
    """Build the tokenizer meta.json describes, or say in one line that it cannot be (a damaged or hand-edited
    meta.json): checkpoints trained without one could not be sampled or exported."""
    try:
        tokenizer = tok.from_meta(meta['tokenizer'])
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise UserError(f"{os.path.join(data_dir, storage.META)} holds a tokenizer that cannot be built ({error}):"
                        f" prepare the data again (python prepare.py {data_dir})") from None
    if tokenizer.vocab_size != meta['vocab_size']:
        raise UserError(f"{os.path.join(data_dir, storage.META)}: its tokenizer has {tokenizer.vocab_size:,} ids,"
                        f" its vocab_size says {meta['vocab_size']:,}: prepare the data again"
                        f" (python prepare.py {data_dir})")


def train(cfg, argv=None, started=None, pause_at=None):
    """Run training as configured, in this process or, under torchrun, in each of its processes; return the last
    evaluation's metrics.

    argv, the command-line arguments it was started with, goes into the resume command printed on a signal.
    started: time.perf_counter() when the run began (train.py: its process's start), else now. pause_at: with
    --max_time, stop at this many seconds of the budget, saving ckpt.pt to resume from (ablate.py's points).
    Process 0 holds out_dir's lock for the whole run (the others write nothing there).
    """
    started = time.perf_counter() if started is None else started
    world = distributed.World.from_environment()
    device = world.device_for(runtime.resolve_device(cfg.device))
    threads = torch.get_num_threads()
    # another process's load at start-up decides the threads of a lone process (torchrun's set OMP_NUM_THREADS)
    is_measured = world.local_size == 1 and (runtime.is_auto_threads(cfg.threads) or cfg.threads > 1)
    busy_cpus = runtime.measure_busy_cpus() if is_measured and torch.device(device).type == 'cpu' else 0.0
    torch.set_num_threads(runtime.resolve_threads(cfg.threads, world.local_size, busy_cpus))
    lock = OutDirLock(cfg.out_dir)
    try:
        with world.join(device):
            world.on_main(lock.acquire)
            if note := runtime.busy_note(busy_cpus, torch.get_num_threads()):
                world.say(note)
            return train_loop(Run(cfg, argv, world, device, started, pause_at))
    finally:
        lock.release()  # ablate.py and the tests train into one out_dir after another in one process
        torch.set_num_threads(threads)  # as it was: ablate.py and the tests call train() in their own process


def train_loop(run):
    """Train from run's iteration to max_iters (or to the end of --max_time), evaluating and saving at every
    eval_interval and at the end; return the last evaluation's metrics. On a signal: save ckpt.pt, print the
    resume command, exit."""
    cfg, world, state = run.cfg, run.world, run.state
    state.startup_s += time.perf_counter() - run.started
    state.restart_timer()
    with (StopOnSignal() as stop,
          tqdm(total=run.planned_iters(), initial=state.iter_num, desc='train', unit='it', dynamic_ncols=True,
               disable=not world.is_main) as progress):
        # a signal during a step stops before the next evaluation, not after it; all processes after the same step
        while not (signum := world.agreed_signal(stop.signum)) and not run.is_paused():
            run.check_time()
            if run.is_evaluation_due():
                started = time.perf_counter()
                run.save_checkpoints(*run.evaluate())
                run.plot()
                run.evaluated(time.perf_counter() - started)
                state.restart_timer()  # evaluation time is not training throughput
                signum = world.agreed_signal(stop.signum)  # a signal that came during the evaluation
                run.check_time()  # with --max_time: the evaluation just made may have to be the last
            if run.is_at_end() or signum:
                break
            run.step()
            progress.update()
            if state.iter_num % cfg.log_interval == 0:
                progress.total = run.planned_iters()
                run.log_steps(progress)
        if signum and not run.is_at_end():  # in the block: a second signal while it saves stops at once
            progress.close()  # its last line before the resume command, not after it
            run.stop_on_signal(signum)
    if run.is_paused() and not run.is_at_end():
        if state.saved_iter != state.iter_num:
            run.save_checkpoints()
    elif run.time_budget:
        run.log_time_spent()
    return state.result


@dataclasses.dataclass
class RunState:
    """Where a run is: what the training loop and its jobs (Run's methods) read and advance, all in one place."""
    started: float                     # time.perf_counter() when this process began the run
    step_losses: StepLosses            # the steps since the last log line
    elapsed_before: float = 0.0        # wall-clock seconds of training in the runs a resume continues
    startup_s: float = 0.0             # of all the elapsed seconds (over resumes), those of start-up
    evaluations_s: float = 0.0         # and those of evaluations, with their checkpoints and plots
    last_evaluation_s: float = 0.0     # the seconds of the last of them (--max_time keeps room for one at the end)
    iter_num: int = 0                  # optimizer steps taken
    best_val_loss: float = math.inf
    evaluated_iter: int | None = None  # the iteration last evaluated
    saved_iter: int | None = None      # the iteration of the newest checkpoint written (or resumed from)
    lr: float = 0.0                    # the learning rate of the last step
    skipped_in_a_row: int = 0          # --on_nonfinite=skip: the steps skipped since the last one taken
    timer_start: float = 0.0           # tokens/s counts the steps since the last log line or evaluation
    timed_steps: int = 0
    result: dict = dataclasses.field(default_factory=dict)  # the last evaluation's metrics

    def elapsed(self):
        """Wall-clock seconds since training started (this process's start-up included), over resumes."""
        return self.elapsed_before + time.perf_counter() - self.started

    def restart_timer(self):
        self.timer_start, self.timed_steps = time.perf_counter(), 0


class Run:
    """One process's training run: the model, optimizer and batches it trains with, its RunState, and the jobs
    the training loop calls (evaluate, save_checkpoints, step, log_steps, stop_on_signal)."""

    def __init__(self, cfg, argv, world, device, started, pause_at=None):
        """Set up the run from scratch or, with --init_from=resume, from out_dir/ckpt.pt; say what it trains.
        started: time.perf_counter() when the run began (its start-up counts)."""
        self.world, self.started, self.pause_at = world, started, pause_at
        self.ckpt_path, self.best_path = (os.path.join(cfg.out_dir, name) for name in checkpoint.CHECKPOINTS)
        if cfg.init_from != 'resume' and not cfg.overwrite:  # before anything in out_dir is touched
            world.on_main(refuse_to_replace, cfg.out_dir)
        self.resumed_path, resumed = load_resumable(cfg.out_dir, world.say) if cfg.init_from == 'resume' else \
            (None, None)
        if resumed:  # the model's shape is the checkpoint's, whatever the config says
            shape = {k: v for k, v in resumed['model_args'].items() if hasattr(cfg, k)}
            if ignored := [k for k in configurator.given_keys(argv) if k in shape and shape[k] != getattr(cfg, k)]:
                world.say(f"{', '.join(f'--{k}={getattr(cfg, k)}' for k in ignored)} ignored: {self.resumed_path}"
                          f" continues its own model ({', '.join(f'{k}={shape[k]}' for k in ignored)}); train"
                          f" another into a new --out_dir")
            cfg = dataclasses.replace(cfg, **shape)
            if cfg.optimizer == 'auto':  # the optimizer whose state it holds (before the choice: AdamW)
                cfg = dataclasses.replace(cfg, optimizer=resumed['config'].get('optimizer', 'adamw'))
        check_config(cfg)
        pretrained = self.read_pretrained(cfg) if cfg.init_from not in INIT_FROM else None
        if pretrained:  # the model's shape is the directory's too (block_size aside: a window of at most its own)
            shape = dataclasses.asdict(pretrained[0])
            cfg = dataclasses.replace(cfg, **{k: shape[k] for k in PRETRAINED_SHAPE})
        cfg = dataclasses.replace(cfg, optimizer=resolve_optimizer(cfg.optimizer, cfg.model_type))  # as saved
        self.cfg, self.world, self.device = cfg, world, device
        self.time_budget = self.read_time_budget(cfg, argv)
        self.end_iter = None if self.time_budget else cfg.max_iters  # with --max_time: decided as it trains
        self.resume_command = resume_command(cfg, argv, world.launcher())  # what a stopped run prints
        self.micro_steps = micro_steps_per_process(cfg, world.size)
        self.meta = storage.load_meta(cfg.data_dir)
        check_tokenizer(cfg.data_dir, self.meta)  # every checkpoint carries it: one that cannot be built is no model
        if cfg.verify_data:
            storage.verify_checksums(cfg.data_dir, self.meta)
            storage.check_token_ids(cfg.data_dir, self.meta)
        if resumed:
            self.check_resumable(resumed)
        if pretrained and pretrained[0].vocab_size != self.meta['vocab_size']:
            raise UserError(f"--init_from={cfg.init_from} has {pretrained[0].vocab_size:,} token ids, {cfg.data_dir}"
                            f" {self.meta['vocab_size']:,} ({self.meta['tokenizer']['kind']}): prepare the data with"
                            f" the weights' tokenizer (GPT-2's: python prepare.py DIR --tokenizer=bpe)")
        self.train_docs, self.val_docs = (open_documents(cfg.data_dir, s, self.meta) for s in ('train', 'val'))
        batches = make_batches(cfg, self.train_docs, 'train', cfg.seed, device, world)
        make_batches(cfg, self.val_docs, 'val', EVAL_SEED, world=world)  # a val split too small fails now, not later

        seed_everything(cfg.seed + world.rank)  # each process its own dropout masks; DDP gives all process 0's
        shape = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelArgs) if hasattr(cfg, f.name)}
        self.args = ModelArgs(**shape, vocab_size=self.meta['vocab_size'],
                              pad_id=self.meta['tokenizer']['special_ids'].get('pad'))
        self.dtype, self.dtype_reason = probe.training_dtype(cfg.dtype, device, self.args, cfg.batch_size)
        is_bfloat16 = self.dtype == torch.bfloat16  # every process trains in the same dtype: any one's bfloat16
        if cfg.dtype == 'auto' and world.agreed_max(int(is_bfloat16)) and not is_bfloat16:
            self.dtype, self.dtype_reason = torch.bfloat16, 'auto: bfloat16, as another process measured it'
        self.raw_model = build_model(self.args).to(device)  # the plain module, whose weights a checkpoint holds
        if pretrained:
            weights = dict(pretrained[1], **{'wpe.weight': pretrained[1]['wpe.weight'][:cfg.block_size]})
            self.raw_model.load_state_dict(weights)
            world.say(f"starting from the weights of {cfg.init_from}")
        world.on_main(prepare_out_dir, cfg.out_dir, checkpoint.estimated_size(self.raw_model, self.meta['tokenizer']))
        self.optimizer = make_optimizer(self.raw_model, cfg, device)
        self.scaler = torch.amp.GradScaler(enabled=self.dtype == torch.float16)
        self.state = RunState(started, StepLosses(device, 0))
        hidden = self.resume(resumed, batches) if resumed else None
        self.is_compiled = runtime.resolve_compile(cfg.compile, device)  # the training step's model and loss
        self.batch_loss = self.make_batch_loss(batches, hidden)
        self.log = MetricsLog(cfg.out_dir, resume_iter=self.state.iter_num if resumed else None) \
            if world.is_main else None
        # bits per character (text) or per note (music), besides per token: a figure that tokenizers do not change;
        # nats per target x targets per unit, where windowings that keep to documents learn no target across a
        # boundary (no <s> after </s>), so for them only the pairs inside the documents count
        val_counts = self.meta['splits']['val']
        self.unit = text_unit(val_counts)
        val_targets = self.val_docs.pairs.sum() if batches.keeps_to_documents else val_counts['tokens']
        self.tokens_per_unit = float(val_targets) / val_counts[self.unit + 's'] if self.unit != 'token' else 1.0
        self.tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
        world.say(self.description())
        if self.micro_batches:
            world.say(self.micro_batches)

    @staticmethod
    def read_pretrained(cfg):
        """(ModelArgs, state_dict) of the Hugging Face directory cfg.init_from names (transformers is imported
        on this path only)."""
        from slm import hf
        args, weights = hf.read_pretrained(cfg.init_from)
        if cfg.block_size > args.block_size:
            raise UserError(f"--block_size={cfg.block_size} is longer than the {args.block_size} positions of"
                            f" --init_from={cfg.init_from}: give at most {args.block_size}")
        return args, weights

    def make_batch_loss(self, batches, hidden):
        """The training batches' BatchLoss, in micro-batches where a batch would not fit --max_memory (then
        self.micro_batches is the line that says so)."""
        cfg, world = self.cfg, self.world
        rows = cfg.batch_size // world.size if batching.shares_rows(cfg.windowing, cfg.model_type) \
            else cfg.batch_size  # the rows of a batch this process runs
        self.chunk_rows, bytes_per_row, budget = micro_batch_rows(self.args, cfg, self.device, self.dtype, rows)
        self.micro_batches = self.chunk_rows < rows and (
            f"a batch of {rows} rows needs about {rows * bytes_per_row / 2**20:,.0f} MB for its logits and"
            f" activations, over the {budget / 2**20:,.0f} MB of --max_memory={cfg.max_memory}: it runs in"
            f" micro-batches of {self.chunk_rows} rows (the same step, in {-(-rows // self.chunk_rows)} parts)")
        return BatchLoss(world.wrap(self.raw_model), batches, self.device, self.dtype, batching.IGNORE_INDEX, hidden,
                         self.chunk_rows, compiled=self.is_compiled)

    def check_resumable(self, resumed):
        """Refuse a checkpoint trained on another vocabulary, cut into windows another way or with another
        optimizer."""
        cfg = self.cfg
        if resumed['tokenizer'] != self.meta['tokenizer']:
            raise UserError(f"{self.resumed_path} was trained on another vocabulary than {cfg.data_dir}:"
                            f" resume with the data_dir it was trained on")
        trained_with = resolved_windowing(resumed['config'])
        if trained_with != resolved_windowing(dataclasses.asdict(cfg)):
            raise UserError(f"{self.resumed_path} was trained with --windowing={trained_with}: resume with that"
                            f" windowing (where a batch source stopped means nothing to another)")
        optimizer = resumed['config'].get('optimizer', 'adamw')  # a checkpoint from before the choice: AdamW
        if optimizer != cfg.optimizer:
            raise UserError(f"{self.resumed_path} was trained with --optimizer={optimizer}: resume with that"
                            f" optimizer (its state is that optimizer's)")

    def resume(self, resumed, batches):
        """Load a checkpoint's weights, optimizer, RNG and batch states into the run; return the LSTM state
        of this process's rows (None for the GPT)."""
        state, world = self.state, self.world
        self.raw_model.load_state_dict(resumed['model'])
        self.optimizer.load_state_dict(resumed['optimizer'])
        if resumed['scaler']:  # empty when saved without float16
            self.scaler.load_state_dict(resumed['scaler'])
        state.iter_num, state.best_val_loss = resumed['iter_num'], resumed['best_val_loss']
        state.elapsed_before = resumed.get('elapsed_s', 0.0)
        spent = resumed.get('spent_s', {})  # a checkpoint from before --max_time: none recorded
        state.startup_s, state.evaluations_s = spent.get('startup', 0.0), spent.get('evaluations', 0.0)
        state.last_evaluation_s = spent.get('last_evaluation', 0.0)
        if self.time_budget:
            self.time_budget.evaluated(state.last_evaluation_s)
        state.saved_iter = state.iter_num
        # a checkpoint saved on a signal between evaluations was not evaluated; one saved at an evaluation was
        state.evaluated_iter = state.iter_num if resumed['val_loss'] is not None else None
        state.step_losses = StepLosses(self.device, state.iter_num - len(resumed['step_losses']),
                                       resumed['step_losses'])
        batches.load_state(resumed['rng']['batches'])  # the same in every process, whatever their number
        saved_rng = [resumed['rng'], *resumed['rng'].get('other_processes', [])]
        if world.rank < len(saved_rng):  # a process the saved run did not have keeps its seed + rank
            checkpoint.restore_global_rng_state(saved_rng[world.rank], self.device)
        message = (f"resuming {self.resumed_path} at iteration {state.iter_num}"
                   f" (best val loss {state.best_val_loss:.4f})")
        if len(saved_rng) != world.size:
            message += f", saved by {len(saved_rng)} processes, continued by {world.size}"
        world.say(message)
        if resumed['rng']['hidden'] is not None:  # all the streams' states: this process takes its rows
            return tuple(h[:, batches.rows].to(self.device) for h in resumed['rng']['hidden'])
        return None

    def description(self):
        """The line that says what trains, where, how fast a path it takes, and on how many tokens."""
        cfg, world, threads = self.cfg, self.world, torch.get_num_threads()
        n_params = sum(p.numel() for p in self.raw_model.parameters())
        processes = f" in each of {world.size} processes" if world.is_distributed else ''
        muon = 'Muon + ' if cfg.optimizer == 'muon' else ''
        why = f" ({self.dtype_reason})" if self.dtype_reason.startswith('auto:') else ''
        path = (f"{str(self.dtype)[6:]}{why}, {'compiled' if self.is_compiled else 'eager'},"
                f" {muon}{runtime.adamw_kernel(cfg.adamw, self.device)} AdamW,"
                f" {threads} CPU thread{'s' if threads > 1 else ''}")
        return (f"{self.args.model_type} with {n_params / 1e6:.2f}M parameters on {self.device} ({path})"
                f"{processes}; {self.tokens_per_iter:,} tokens per iteration"
                f" ({resolved_windowing(dataclasses.asdict(cfg))} windows,"
                f" {self.batch_loss.batches.target_fraction:.0%} of them targets), {self.length()}")

    def length(self):
        if self.time_budget:
            return (f"for {self.cfg.max_time} of wall clock ({self.time_budget.seconds:g} s, start-up, evaluations"
                    f" and the last checkpoint included)")
        return f"{self.cfg.max_iters} iterations"

    def read_time_budget(self, cfg, argv):
        """The TimeBudget of --max_time, or None: none given, or --max_iters given on the command line too."""
        if not cfg.max_time:
            return None
        if 'max_iters' in configurator.given_keys(argv):
            self.world.say(f"--max_iters={cfg.max_iters} on the command line wins over --max_time={cfg.max_time}")
            return None
        return budget.TimeBudget(budget.parse_duration(cfg.max_time), cfg.eval_interval)

    def planned_iters(self):
        """The iterations the run will have: max_iters, or with --max_time those its budget holds at the recent
        pace (None before it is known)."""
        if self.end_iter is not None or not self.time_budget:
            return self.end_iter
        planned = self.time_budget.planned_iters(self.state.iter_num, self.state.elapsed())
        return self.world.agreed_max(planned) if planned is not None else None

    def check_time(self):
        """With --max_time: end the run here, before another step, when that step and the last evaluation would
        not fit in the budget (every process at the same step)."""
        if self.time_budget and self.end_iter is None:
            if self.world.agreed_max(int(self.time_budget.should_end(self.state.elapsed()))):
                self.end_iter = self.state.iter_num

    def is_at_end(self):
        return self.end_iter is not None and self.state.iter_num >= self.end_iter

    def is_paused(self):
        """With --max_time and pause_at: whether the run has spent pause_at seconds of its budget."""
        return bool(self.time_budget and self.pause_at is not None and
                    self.world.agreed_max(int(self.state.elapsed() >= self.pause_at)))

    def evaluated(self, seconds):
        self.state.evaluations_s += seconds
        self.state.last_evaluation_s = seconds
        if self.time_budget:
            self.time_budget.evaluated(seconds)

    def log_time_spent(self):
        """The last line of metrics.jsonl of a --max_time run: how its budget was spent."""
        state = self.state
        elapsed = state.elapsed()
        self.log_record({'iter': state.iter_num, 'max_time_s': self.time_budget.seconds, 'elapsed_s': elapsed,
                         'startup_s': state.startup_s, 'evaluations_s': state.evaluations_s,
                         'steps_s': elapsed - state.startup_s - state.evaluations_s})
        self.world.say(f"{state.iter_num} iterations in {elapsed:.1f} s of the {self.time_budget.seconds:g} s budget"
                       f" (start-up {state.startup_s:.1f} s, evaluations {state.evaluations_s:.1f} s)")

    def is_evaluation_due(self):
        """Every eval_interval steps and at the end, unless this iteration was evaluated (before a resume)."""
        it = self.state.iter_num
        return (it % self.cfg.eval_interval == 0 or self.is_at_end()) and it != self.state.evaluated_iter

    def evaluate(self):
        """Evaluate on both splits, log the record and say its line; return (val loss, whether it is the best)."""
        cfg, state, unit = self.cfg, self.state, self.unit
        self.stop_if_nonfinite(state.step_losses.values(), check_weights=True)  # evaluate, log nothing non-finite
        started = time.perf_counter()
        val_loss = evaluate(self.raw_model, self.val_docs, cfg, self.device, self.dtype, self.world,
                            self.chunk_rows, 'eval val')
        if not math.isfinite(val_loss):  # finite weights can still be garbage (1e30s), in either mode
            raise UserError(f"non-finite validation loss at iteration {state.iter_num}: training stopped,"
                            f" nothing saved; {self.last_good()}")
        bits = val_loss / math.log(2)
        train_loss = evaluate(self.raw_model, self.train_docs, cfg, self.device, self.dtype, self.world,
                              self.chunk_rows, 'eval train')
        record = {'iter': state.iter_num, 'val_loss': val_loss, 'val_perplexity': math.exp(min(val_loss, 50)),
                  'val_bits_per_token': bits,
                  f'val_bits_per_{unit}': bits_per_unit(val_loss, self.tokens_per_unit, 1),
                  'eval_train_loss': train_loss, 'eval_s': time.perf_counter() - started,
                  'elapsed_s': state.elapsed()}
        self.log_record(record)
        self.world.say(f"iter {state.iter_num}: val loss {val_loss:.4f}, perplexity {record['val_perplexity']:.2f},"
                       f" {record[f'val_bits_per_{unit}']:.3f} bits/{unit} (train {train_loss:.4f})")
        state.result = record
        is_best = val_loss < state.best_val_loss
        state.best_val_loss, state.evaluated_iter = min(state.best_val_loss, val_loss), state.iter_num
        return val_loss, is_best

    def step(self):
        """One optimizer step at the scheduled learning rate, recorded in state.step_losses."""
        state = self.state
        state.lr = self.learning_rate()
        set_learning_rate(self.optimizer, state.lr)
        loss, is_skipped = train_step(self.batch_loss, self.optimizer, self.scaler, self.cfg, self.micro_steps)
        state.step_losses.record(loss)
        self.count_skipped(is_skipped)
        state.iter_num += 1
        state.timed_steps += 1
        if self.time_budget:
            self.time_budget.stepped(state.iter_num)

    def learning_rate(self):
        """The learning rate of the next step: the config's schedule at this iteration, or with --max_time at
        this point of the training time (budget.TimeBudget.progress), the schedule laid over it (warmup the same
        share of it as warmup_iters is of max_iters, the cosine at min_lr at its end): it falls with the clock
        whatever the pace does, and every process reads the same point."""
        cfg = self.cfg
        if not self.time_budget:
            return learning_rate(self.state.iter_num, cfg)
        span = TIME_SCHEDULE_STEPS
        progress = self.time_budget.progress(self.state.elapsed(), self.state.startup_s + self.state.evaluations_s)
        point = self.world.agreed_max(math.floor(progress * span))
        warmup = round(cfg.warmup_iters * span / cfg.max_iters) if cfg.max_iters else 0
        return learning_rate(point, dataclasses.replace(cfg, max_iters=span, warmup_iters=warmup, lr_decay_iters=0))

    def count_skipped(self, is_skipped):
        """--on_nonfinite=skip: say so for each skipped step, and stop after MAX_SKIPPED_IN_A_ROW in a row."""
        state = self.state
        state.skipped_in_a_row = state.skipped_in_a_row + 1 if is_skipped else 0
        if is_skipped:
            self.world.say(f"iteration {state.iter_num}: non-finite loss or gradients, step skipped")
        if state.skipped_in_a_row == MAX_SKIPPED_IN_A_ROW:
            raise UserError(f"{state.skipped_in_a_row} steps in a row had non-finite losses or gradients"
                            f" (iterations {state.iter_num + 1 - state.skipped_in_a_row}-{state.iter_num}): training"
                            f" stopped; {self.last_good()}")

    def log_steps(self, progress):
        """Log the steps since the last log line: their mean loss (of the finite ones), the learning rate, tokens/s;
        stop if one was not finite (--on_nonfinite=stop)."""
        state = self.state
        values = state.step_losses.values()  # the only host sync of the hot loop (but for --on_nonfinite=skip)
        self.stop_if_nonfinite(values)
        finite = [v for v in values if math.isfinite(v)]
        tokens_per_sec = state.timed_steps * self.tokens_per_iter / (time.perf_counter() - state.timer_start)
        record = {'iter': state.iter_num, 'lr': state.lr, 'tokens_per_sec': tokens_per_sec,
                  'elapsed_s': state.elapsed()}
        if finite:
            record['train_loss'] = sum(finite) / len(finite)
            progress.set_postfix(loss=f"{record['train_loss']:.4f}", tok_s=f'{tokens_per_sec:,.0f}')
        if len(finite) < len(values):
            record['skipped_steps'] = len(values) - len(finite)
        self.log_record(record)
        state.restart_timer()
        state.step_losses = StepLosses(self.device, state.iter_num)

    def stop_if_nonfinite(self, values, check_weights=False):
        """Raise, saving nothing, if a recorded step was not finite (stop mode) or the weights are not."""
        bad_iter = self.state.step_losses.first_nonfinite(values) if self.cfg.on_nonfinite == 'stop' else None
        if bad_iter is None and not (check_weights and not weights_finite(self.raw_model)):
            return
        what = f"loss or gradients at iteration {bad_iter}" if bad_iter is not None else \
            f"weights at iteration {self.state.iter_num}"
        raise UserError(f"non-finite {what}: training stopped, nothing saved; {self.last_good()}")

    def last_good(self):
        """What a stopped run leaves to resume from, and how."""
        if self.state.saved_iter is None:
            return "no checkpoint was written: start again with a lower --learning_rate"
        return (f"{self.ckpt_path} (iteration {self.state.saved_iter}) is the last good checkpoint: resume it with a"
                f" lower --learning_rate or --on_nonfinite=skip ({self.resume_command})")

    def log_record(self, record):
        if self.log:
            with self.writing(self.log.path):
                self.log.write(**record)

    def plot(self):
        if self.log:
            with self.writing(self.log.plot_path):
                self.log.plot()

    @contextlib.contextmanager
    def writing(self, path):
        """Turn an OSError while writing path in out_dir into a UserError that says what to do about it."""
        try:
            yield
        except OSError as error:  # a disk that filled up during the run, say: atomic writes leave the old file whole
            last = self.state.saved_iter is not None and (self.ckpt_path, self.state.saved_iter, self.resume_command)
            raise write_error(path, error, self.cfg.out_dir, self.state.iter_num, last) from None

    def save_checkpoints(self, val_loss=None, is_best=False):
        """best.pt first, then ckpt.pt: a crash between the two leaves ckpt.pt the older, and resuming it
        redoes the evaluation that wrote best.pt, so best.pt never lags behind ckpt.pt's best_val_loss.
        val_loss is None for a checkpoint saved on a signal between evaluations."""
        values = self.state.step_losses.values()
        self.stop_if_nonfinite(values, check_weights=True)  # never replace a good checkpoint with a non-finite one
        self.world.on_main(self.write_checkpoints, self.checkpoint_state(val_loss, values), is_best)
        self.state.saved_iter = self.state.iter_num

    def checkpoint_state(self, val_loss, step_losses):
        """What a checkpoint holds (see checkpoint.py), gathered from every process."""
        cfg, state, world = self.cfg, self.state, self.world
        # every process's RNG states, and the LSTM state of all the streams, whatever process carries them
        rng_states = world.gather(checkpoint.global_rng_state(self.device))
        hidden = self.batch_loss.hidden
        hidden = [world.gather_rows(h, dim=1) for h in hidden] if hidden else None
        return {
            'model_args': dataclasses.asdict(self.args), 'model': self.raw_model.state_dict(),
            'optimizer': self.optimizer.state_dict(), 'scaler': self.scaler.state_dict(), 'iter_num': state.iter_num,
            'best_val_loss': state.best_val_loss, 'val_loss': val_loss, 'config': dataclasses.asdict(cfg),
            'tokenizer': self.meta['tokenizer'],
            'data': {'data_dir': cfg.data_dir, f'val_tokens_per_{self.unit}': self.tokens_per_unit},
            'rng': {**rng_states[0], 'other_processes': rng_states[1:], 'batches': self.batch_loss.batches.state(),
                    'hidden': hidden},
            'step_losses': step_losses, 'elapsed_s': state.elapsed(),
            'spent_s': {'startup': state.startup_s, 'evaluations': state.evaluations_s,
                        'last_evaluation': state.last_evaluation_s}}

    def write_checkpoints(self, contents, is_best):
        if self.state.saved_iter is None:
            self.clear_old_run(is_best)
        for path in ([self.best_path] if is_best else []) + [self.ckpt_path]:
            with self.writing(path):
                checkpoint.save(path, contents)

    def clear_old_run(self, is_best):
        """Before a scratch run's first checkpoint (--overwrite): remove an old run's files that it would not
        replace, so that none stays beside the new ones, where a resume or sample.py would take it. ckpt.pt goes
        before best.pt is replaced: a kill between the two must not leave a new best.pt beside the old ckpt.pt."""
        for path in [self.ckpt_path] + ([] if is_best else [self.best_path]) + [self.log.plot_path]:
            if os.path.exists(path):
                with self.writing(path):
                    os.remove(path)
        if not self.log.is_started:  # nothing logged yet (a signal before the first evaluation)
            with self.writing(self.log.path):
                self.log.rewrite()

    def stop_on_signal(self, signum):
        """Save ckpt.pt (unless this iteration's is saved), print the command that resumes, exit 128 + signum."""
        if self.state.saved_iter != self.state.iter_num:
            self.save_checkpoints()
        if self.world.is_main:
            print(f"{signal.Signals(signum).name}: stopped at iteration {self.state.iter_num}, saved"
                  f" {self.ckpt_path}. Resume with: {self.resume_command}", file=sys.stderr)
        raise SystemExit(128 + signum)
