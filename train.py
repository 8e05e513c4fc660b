"""Train a GPT or an LSTM on a prepared data directory; checkpoint, log metrics and plot the loss.

    python train.py config/train_akjv.py --batch_size=500
    python train.py config/train_akjv_lstm.py
    python train.py config/train_akjv.py --init_from=resume      # continue out_dir/ckpt.pt
    torchrun --standalone --nproc_per_node=4 train.py config/train_akjv.py --gradient_accumulation_steps=4

Writes to out_dir: ckpt.pt (latest), best.pt (lowest val loss), metrics.jsonl, loss.png.
Ctrl-C or SIGTERM finishes the current step, saves ckpt.pt and prints the command that resumes the run.
Under torchrun (see distributed.py) the processes share each optimizer step's batches and process 0 writes.
"""
import dataclasses
import json
import math
import os
import random
import shlex
import signal
import sys
import threading
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import batching
import checkpoint
import configurator
import distributed
import runtime
import storage
from configurator import UNKNOWN, UserError, option, parse, run
from model import MODELS, ModelArgs, build_model

EVAL_SEED = 0  # the same val windows for every run, whatever its training seed, so runs compare


@dataclasses.dataclass
class TrainConfig:
    # input and output
    data_dir: str = 'data/akjv'   # a directory written by prepare.py
    out_dir: str = 'out'          # checkpoints, metrics.jsonl and loss.png go here
    init_from: str = option('scratch', choices=('scratch', 'resume'))  # resume: continue from out_dir/ckpt.pt
    # model (see model.ModelArgs; ignored on resume, where the checkpoint's shape is used)
    model_type: str = option('gpt', choices=MODELS)  # the network: a decoder-only transformer or an LSTM
    n_layer: int = option(4, low=1)  # transformer blocks (GPT) or stacked LSTM layers
    n_head: int = option(4, low=1)   # GPT only: attention heads, n_embd divided among them
    n_embd: int = option(128, low=1)  # width: the token embedding and the residual stream (GPT)
    n_hidden: int = option(0, low=0)  # LSTM only: hidden size (0 = n_embd)
    dropout: float = option(0.0, low=0, high=1, high_open=True)  # share of activations zeroed in training
    bias: bool = False            # biases in the linear layers and layer norms
    block_size: int = option(128, low=1)  # tokens per window (GPT context; LSTM steps of backprop through time)
    windowing: str = option('auto', choices=('auto', batching.WINDOWINGS), error=UNKNOWN)  # how batches are cut
    #                               (batching.py); auto: random (GPT), streams (LSTM)
    num_workers: int = option(0, low=0)  # sliding/strided: DataLoader worker processes (0 = in this process)
    # batches and optimization
    batch_size: int = option(32, low=1)  # windows per micro-step
    gradient_accumulation_steps: int = option(1, low=1)  # micro-steps per optimizer step
    max_iters: int = option(2000, low=0)  # optimizer steps in total (0: evaluate and save the initial model)
    learning_rate: float = option(1e-3, low=0, low_open=True)  # peak learning rate, reached after warmup
    min_lr: float = option(1e-4, low=0)  # floor of the cosine decay
    warmup_iters: int = option(100, low=0)  # linear warmup steps
    lr_decay_iters: int = option(0, low=0)  # step where the cosine reaches min_lr (0 = max_iters)
    weight_decay: float = option(0.1, low=0)  # AdamW decay, applied to weight matrices and embeddings only
    beta1: float = option(0.9, low=0, high=1, high_open=True)   # AdamW: decay rate of the gradient's mean
    beta2: float = option(0.99, low=0, high=1, high_open=True)  # AdamW: decay rate of its mean square
    grad_clip: float = option(1.0, low=0)  # clip the gradient norm to this (0 = off)
    # evaluation and logging
    eval_interval: int = option(250, low=1)  # evaluate, checkpoint and plot every this many steps (and at the end)
    eval_iters: int = option(20, low=1)  # batches per evaluation, the same batches every time
    log_interval: int = option(10, low=1)  # steps between train-loss and tokens/s log lines
    # system
    device: str = option('auto', choices=runtime.DEVICES)  # auto: cuda if present, else mps, else cpu
    dtype: str = option('auto', choices=('auto', runtime.DTYPES))  # autocast (auto: bfloat16 on CUDA and on
    #                               CPUs with bfloat16 instructions, else float32; see runtime.py)
    compile: bool | str = option('auto', choices=runtime.COMPILE)  # torch.compile the model (auto: on CUDA)
    threads: int = option(0, low=0)  # CPU threads per process (0 = one per physical core, shared among processes)
    adamw: str = option('auto', choices=('auto', runtime.ADAMW_KERNELS))  # AdamW's kernels (auto: fused on
    #                               CPU and CUDA, else foreach)
    seed: int = option(1337, low=0, high=2**32 - 1)  # seeds the initial weights, the batches and dropout
    # reliability
    on_nonfinite: str = option('stop', choices=('stop', 'skip'))  # a step with a NaN/inf loss or gradient
    #                               stops the run, or is skipped
    verify_data: bool = True      # check the data files' sha256 against meta.json at start (about 1 s per GB)


def learning_rate(it, cfg):
    """Linear warmup to learning_rate, then cosine decay to min_lr at lr_decay_iters, then flat."""
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / cfg.warmup_iters
    if it >= decay_iters:
        return cfg.min_lr
    progress = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


def make_optimizer(model, cfg, device):
    """AdamW with weight decay on matrices (2-D and up) only, with the kernels --adamw picks."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': cfg.weight_decay},
              {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                             **runtime.adamw_options(cfg.adamw, device))


def lm_loss(logits, targets, ignore_index):
    """Mean next-token cross-entropy in nats over the targets that are not ignore_index."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=ignore_index)


def detach_hidden(hidden):
    """Cut the graph at a TBPTT boundary: keep the LSTM state's values, drop their history."""
    return tuple(h.detach() for h in hidden)


class BatchLoss:
    """Calling it runs the model on the next batch of one batch source and returns the mean loss over the
    batch's real targets; target_count holds how many there were (a device tensor: reading it waits), and
    weight the batch's weight in a training step (batching.Batch.weight).

    For the LSTM it carries the hidden state from batch to batch of a contiguous source (streams, packed):
    detached between batches, reset to zeros where the source starts its streams over. With any other source
    every batch starts from zeros, and there is no state to carry (hidden stays None).
    """

    def __init__(self, model, batches, device, dtype, ignore_index, hidden=None):
        self.model, self.batches = model, batches
        self.device, self.dtype, self.ignore_index = device, dtype, ignore_index
        self.is_recurrent = unwrap(model).args.model_type == 'lstm'
        self.hidden, self.target_count, self.weight = hidden, None, 1.0

    def __call__(self):
        is_fresh = self.hidden is None or self.batches.is_epoch_start
        batch = batching.to_device(next(self.batches), self.device)
        hidden = self.hidden
        if self.is_recurrent and is_fresh:
            hidden = unwrap(self.model).init_hidden(batch.x.shape[0], self.device)
        self.target_count, self.weight = (batch.y != self.ignore_index).sum(), batch.weight
        with runtime.autocast(self.device, self.dtype):
            if self.is_recurrent:
                logits, hidden = self.model(batch.x, hidden, positions=batch.positions)
                self.hidden = detach_hidden(hidden) if self.batches.is_contiguous else None
            else:
                logits = self.model(batch.x, positions=batch.positions, doc_ids=batch.doc_ids)
            return lm_loss(logits, batch.y, self.ignore_index)


def train_step(batch_loss, optimizer, scaler, cfg, micro_steps=None):
    """One optimizer step: forward and backward over gradient_accumulation_steps batches, clip, update (unless
    the step is not finite and cfg.on_nonfinite is skip). bench.py times this.

    micro_steps: how many of those batches this process runs when several share the step (see
    micro_steps_per_process); their gradients are averaged over the processes in the last one's backward pass.
    Returns (the step's loss as a device tensor, NaN when its loss or gradients were not finite, whether the
    step was skipped). Reading the loss waits for the device; see StepLosses for why the loop waits rarely.
    """
    micro_steps = micro_steps or cfg.gradient_accumulation_steps
    ddp = batch_loss.model if isinstance(batch_loss.model, DistributedDataParallel) else None
    params = [p for p in unwrap(batch_loss.model).parameters() if p.requires_grad]
    loss_sum = torch.zeros((), device=params[0].device)
    for micro_step in range(micro_steps):
        if ddp:
            # Average the gradients over the processes in the last micro-step's backward only: the others just
            # accumulate. DDP's no_sync() context manager does this by setting this flag for its block; setting
            # it here keeps one forward-backward line for both cases instead of two copies of it.
            ddp.require_backward_grad_sync = micro_step == micro_steps - 1
        loss = batch_loss() * batch_loss.weight / micro_steps  # weight: see batching.Batch (1 but for shared rows)
        scaler.scale(loss).backward()
        loss_sum += loss.detach()
    if ddp:  # the mean of all processes' losses: each must decide alike below, or one would wait for the others
        dist.all_reduce(loss_sum, group=ddp.process_group)
        loss_sum /= ddp.process_group.size()
    scaler.unscale_(optimizer)  # a no-op unless float16; the gradients are the true ones from here on
    is_finite = torch.isfinite(loss_sum)
    if cfg.grad_clip:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    elif not scaler.is_enabled():
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    if not scaler.is_enabled():  # float16's overflowing gradients are the scaler's to skip (it lowers its scale)
        is_finite &= torch.isfinite(grad_norm)
    is_skipped = cfg.on_nonfinite == 'skip' and not is_finite.item()  # the skip mode's one host sync per step
    if not is_skipped:
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return torch.where(is_finite, loss_sum, torch.nan), is_skipped


def unwrap(model):
    """The plain module behind a DistributedDataParallel and a torch.compile wrapper."""
    model = getattr(model, 'module', model)
    return getattr(model, '_orig_mod', model)


def evaluate(model, documents, cfg, device, dtype, ignore_index, world=None):
    """Loss per real target over the same eval_iters batches of a split every time, cut as training cuts them;
    shared out among the processes of a run as training is, every process gets the single process's figure."""
    world = world or distributed.World()
    batches = make_batches(cfg, documents, 'evaluation', EVAL_SEED, world=world)
    n = min(cfg.eval_iters, getattr(batches, 'batches_per_epoch', cfg.eval_iters))
    return mean_loss(model, batches, n, device, dtype, ignore_index, world)


@torch.no_grad()
def mean_loss(model, batches, n, device, dtype, ignore_index, world=None):
    """Loss per real target token over the single process's next n batches of batches (batches with more
    padding weigh less). In a run of several processes each runs its share of them (every batch on its rows,
    or batches rank, rank + size, ...; see batching.py), and every process gets the whole figure."""
    world = world or distributed.World()
    batch_loss = BatchLoss(model, batches, device, dtype, ignore_index)
    mine = n if batches.is_contiguous else len(range(world.rank, n, world.size))
    total, count = torch.zeros((), device=device), torch.zeros((), device=device)
    model.eval()
    for _ in range(mine):
        loss = batch_loss()
        total, count = total + loss * batch_loss.target_count, count + batch_loss.target_count
    model.train()
    return (world.sum(total) / world.sum(count)).item()


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
    chosen = config.get('windowing', 'auto')
    return batching.default_windowing(config['model_type']) if chosen == 'auto' else chosen


def check_config(cfg):
    """Each field's declared valid values, then what no one field can say alone."""
    configurator.check(cfg)
    if cfg.model_type == 'gpt' and cfg.n_embd % cfg.n_head:
        raise UserError(f"--n_embd={cfg.n_embd} must be a multiple of --n_head={cfg.n_head}")


def micro_steps_per_process(cfg, world_size):
    """How many micro-steps of each optimizer step one of world_size processes runs, so that together they run
    the single process's step on the same batches. The rows of the windowings whose rows continue from batch
    to batch (streams, packed) are shared out (each process runs every micro-step on its rows of the batch),
    because a row's batches must follow each other through one LSTM state; the other windowings' micro-steps
    are. Either way a step trains on batch_size x block_size x gradient_accumulation_steps tokens, however many
    processes share it."""
    if batching.shares_rows(cfg.windowing, cfg.model_type):
        if cfg.batch_size % world_size:
            raise UserError(f"--batch_size={cfg.batch_size} rows of {resolved_windowing(dataclasses.asdict(cfg))}"
                            f" batches cannot be shared evenly by {world_size} processes: make it a multiple of"
                            f" {world_size}")
        return cfg.gradient_accumulation_steps
    if cfg.gradient_accumulation_steps % world_size:
        raise UserError(f"--gradient_accumulation_steps={cfg.gradient_accumulation_steps} cannot be shared"
                        f" evenly by {world_size} processes: make it a multiple of {world_size}")
    return cfg.gradient_accumulation_steps // world_size


def prepare_out_dir(out_dir, checkpoint_bytes):
    """Create out_dir and prove it is writable and has room for the checkpoints now, rather than at the first
    checkpoint an hour from now."""
    try:
        os.makedirs(out_dir, exist_ok=True)
        with storage.atomic_write(os.path.join(out_dir, '.write-test')) as f:
            f.write(b'ok')
        os.remove(os.path.join(out_dir, '.write-test'))
    except OSError as error:
        raise UserError(f"cannot write to out_dir {out_dir}: {error.strerror}; choose another --out_dir")
    storage.remove_stray_temporaries(out_dir)
    # ckpt.pt, best.pt, and the temporary file of the one being replaced; files there now make room as replaced
    present = sum(os.path.getsize(p) for name in ('ckpt.pt', 'best.pt')
                  if os.path.exists(p := os.path.join(out_dir, name)))
    storage.check_free_space(out_dir, 3 * checkpoint_bytes - present, 'the checkpoints (ckpt.pt, best.pt)')


class MetricsLog:
    """out_dir/metrics.jsonl (one JSON object per line) and the loss plot drawn from it."""

    def __init__(self, out_dir, resume_iter=None):
        self.path = os.path.join(out_dir, 'metrics.jsonl')
        self.plot_path = os.path.join(out_dir, 'loss.png')
        self.records = []
        if resume_iter is not None and os.path.exists(self.path):
            with open(self.path) as f:  # keep what led up to the checkpoint; later lines were lost work
                self.records = [r for r in map(_json_or_none, f) if r and r['iter'] <= resume_iter]
        with storage.atomic_write(self.path, 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in self.records)

    def write(self, **record):
        self.records.append(record)
        with open(self.path, 'a') as f:
            f.write(json.dumps(record) + '\n')

    def plot(self):
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        for key, style in (('train_loss', '-'), ('eval_train_loss', 'o--'), ('val_loss', 'o-')):
            points = [(r['iter'], r[key]) for r in self.records if key in r]
            if points:
                ax.plot(*zip(*points), style, label=key.replace('_', ' '), alpha=0.8)
        ax.set_xlabel('iteration')
        ax.set_ylabel('loss (nats per token)')
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with storage.atomic_write(self.plot_path) as f:
            fig.savefig(f, format='png', dpi=100)
        plt.close(fig)


def _json_or_none(line):
    """A metrics.jsonl line as a dict, or None for a line that a crash cut short."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and 'iter' in record else None


def seed_everything(seed):
    """Seed every global RNG a run may draw from, so that a run is a function of its seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # the CPU's and every accelerator's


class StopOnSignal:
    """While active, SIGINT (Ctrl-C) and SIGTERM only ask the training loop to stop: it finishes the step it is
    in, saves a checkpoint and exits. A second signal stops at once (the atomic writes keep the files whole)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum, self.previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # the only thread Python lets handle signals
            self.previous = {signum: signal.signal(signum, self._request) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def _request(self, signum, frame):
        if self.signum is not None:
            self.__exit__()
            signal.raise_signal(signum)  # to the previous handler: KeyboardInterrupt, or the default death
            return
        self.signum = signum
        # os.write, not print: this handler may run while the main code is inside a print to the same stream
        os.write(2, f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint"
                    f" (send it again to stop at once)\n".encode())


class StepLosses:
    """The loss of each step since the last log line, left on the device so that the hot loop never waits.

    Why not check every loss for NaN at once: reading a value from the GPU makes the CPU wait for the GPU to
    finish all the work queued so far, which stops it from queuing the next steps ahead, and that idle time is
    a real share of a small model's step. So a step whose loss or gradients were not finite is recorded as NaN
    here, and the loop reads the record where it waits anyway (log lines, evaluations, checkpoints). With
    --on_nonfinite=stop, that means up to log_interval steps run on from a non-finite step before the run
    stops; their weights are never saved, since every checkpoint reads this record (and checks the weights)
    first. --on_nonfinite=skip must decide before the optimizer step, so it pays one wait per step.
    """

    def __init__(self, device, first_iter, values=()):
        self.first_iter = first_iter  # iteration of the first step recorded
        self.losses = [torch.tensor(v, device=device) for v in values]

    def record(self, loss):
        self.losses.append(loss)

    def values(self):
        """The recorded losses as floats (a host sync)."""
        return torch.stack(self.losses).tolist() if self.losses else []

    def first_nonfinite(self, values):
        """The iteration of the first step of values (as read from this record) that was not finite, or None."""
        return next((self.first_iter + i for i, v in enumerate(values) if not math.isfinite(v)), None)


MAX_SKIPPED_IN_A_ROW = 20  # --on_nonfinite=skip gives up after this many: the run is diverging, not unlucky


def weights_finite(model):
    return bool(torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all())


def resume_command(cfg, argv=None, launcher='python'):
    """The command that continues this run from its ckpt.pt: the arguments it was started with (or, when they
    are unknown, the settings that differ from the defaults), then --init_from=resume."""
    if argv is None:
        defaults = dataclasses.asdict(TrainConfig())
        argv = [f'--{k}={v}' for k, v in dataclasses.asdict(cfg).items() if v != defaults[k]]
    kept = [arg for arg in argv if not arg.startswith('--init_from=')]
    return f"{launcher} {shlex.join(['train.py', *kept, '--init_from=resume'])}"


def train(cfg, argv=None):
    """Run training as configured, in this process or, under torchrun, in each of its processes; return the last
    evaluation's metrics.

    argv, the command-line arguments it was started with, goes into the resume command printed on a signal.
    """
    world = distributed.World.from_environment()
    device = world.device_for(runtime.resolve_device(cfg.device))
    threads = torch.get_num_threads()
    torch.set_num_threads(runtime.resolve_threads(cfg.threads, world.local_size))
    try:
        with world.join(device):
            return train_process(cfg, argv, world, device)
    finally:
        torch.set_num_threads(threads)  # as it was: ablate.py and the tests call train() in their own process


def train_process(cfg, argv, world, device):
    """What train() runs in each process of world, on device."""
    started = time.perf_counter()
    ckpt_path, best_path = os.path.join(cfg.out_dir, 'ckpt.pt'), os.path.join(cfg.out_dir, 'best.pt')
    resumed = checkpoint.load(ckpt_path) if cfg.init_from == 'resume' else None
    if resumed:  # the model's shape is the checkpoint's, whatever the config says
        cfg = dataclasses.replace(cfg, **{k: v for k, v in resumed['model_args'].items() if hasattr(cfg, k)})
    check_config(cfg)
    micro_steps = micro_steps_per_process(cfg, world.size)
    dtype = runtime.resolve_dtype(cfg.dtype, device)
    meta = storage.load_meta(cfg.data_dir)
    if cfg.verify_data:
        storage.verify_checksums(cfg.data_dir, meta)
    if resumed and resumed['tokenizer'] != meta['tokenizer']:
        raise UserError(f"{ckpt_path} was trained on another vocabulary than {cfg.data_dir}:"
                        f" resume with the data_dir it was trained on")
    trained_with = resolved_windowing(resumed['config']) if resumed else None
    if resumed and trained_with != resolved_windowing(dataclasses.asdict(cfg)):
        raise UserError(f"{ckpt_path} was trained with --windowing={trained_with}: resume with that windowing"
                        f" (where a batch source stopped means nothing to another)")
    train_docs, val_docs = (open_documents(cfg.data_dir, split, meta) for split in ('train', 'val'))
    batches = make_batches(cfg, train_docs, 'train', cfg.seed, device, world)
    make_batches(cfg, val_docs, 'val', EVAL_SEED, world=world)  # a val split too small fails now, not later

    seed_everything(cfg.seed + world.rank)  # each process its own dropout masks; DDP gives all process 0's weights
    shape = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelArgs) if hasattr(cfg, f.name)}
    args = ModelArgs(**shape, vocab_size=meta['vocab_size'], pad_id=meta['tokenizer']['special_ids'].get('pad'))
    raw_model = build_model(args).to(device)
    world.on_main(prepare_out_dir, cfg.out_dir, checkpoint.estimated_size(raw_model, meta['tokenizer']))
    optimizer = make_optimizer(raw_model, cfg, device)
    scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    iter_num, best_val_loss, hidden, step_losses = 0, float('inf'), None, ()
    elapsed_before = 0.0  # wall-clock seconds of training before this process (in the runs a resume continues)
    if resumed:
        raw_model.load_state_dict(resumed['model'])
        optimizer.load_state_dict(resumed['optimizer'])
        if resumed['scaler']:  # empty when saved without float16
            scaler.load_state_dict(resumed['scaler'])
        iter_num, best_val_loss = resumed['iter_num'], resumed['best_val_loss']
        elapsed_before = resumed.get('elapsed_s', 0.0)
        batches.load_state(resumed['rng']['batches'])  # the same in every process, whatever their number
        saved_rng = [resumed['rng'], *resumed['rng'].get('other_processes', [])]
        if world.rank < len(saved_rng):  # a process the saved run did not have keeps its seed + rank
            checkpoint.restore_global_rng_state(saved_rng[world.rank], device)
        if resumed['rng']['hidden'] is not None:  # all the streams' states: this process takes its rows
            hidden = tuple(h[:, batches.rows].to(device) for h in resumed['rng']['hidden'])
        step_losses = resumed['step_losses']
        message = f"resuming {ckpt_path} at iteration {iter_num} (best val loss {best_val_loss:.4f})"
        if len(saved_rng) != world.size:
            message += f", saved by {len(saved_rng)} processes, continued by {world.size}"
        world.say(message)
    # a checkpoint saved on a signal between evaluations was not evaluated; one saved at an evaluation was
    evaluated_iter = iter_num if resumed and resumed['val_loss'] is not None else None
    saved_iter = iter_num if resumed else None
    model = torch.compile(raw_model) if runtime.resolve_compile(cfg.compile, device) else raw_model
    ignore_index = batching.IGNORE_INDEX
    batch_loss = BatchLoss(world.wrap(model), batches, device, dtype, ignore_index, hidden)
    log = MetricsLog(cfg.out_dir, resume_iter=iter_num if resumed else None) if world.is_main else None
    steps = StepLosses(device, iter_num - len(step_losses), step_losses)

    n_params = sum(p.numel() for p in raw_model.parameters())
    tokens_per_iter = cfg.batch_size * cfg.block_size * cfg.gradient_accumulation_steps
    # bits per character (text) or per note (music), besides per token: a figure that tokenizers do not change;
    # nats per target x targets per unit, where windowings that keep to documents learn no target across a
    # boundary (no <s> after </s>), so for them only the pairs inside the documents count
    val_counts = meta['splits']['val']
    unit = next((u for u in ('char', 'note') if val_counts.get(u + 's')), 'token')
    val_targets = val_docs.pairs.sum() if batches.keeps_to_documents else val_counts['tokens']
    tokens_per_unit = float(val_targets) / val_counts[unit + 's'] if unit != 'token' else 1.0
    processes = f" in each of {world.size} processes" if world.is_distributed else ''
    threads = torch.get_num_threads()
    path = (f"{str(dtype)[6:]}, {'compiled' if model is not raw_model else 'eager'},"
            f" {runtime.adamw_kernel(cfg.adamw, device)} AdamW, {threads} CPU thread{'s' if threads > 1 else ''}")
    world.say(f"{args.model_type} with {n_params / 1e6:.2f}M parameters on {device} ({path}){processes};"
              f" {tokens_per_iter:,} tokens per iteration ({resolved_windowing(dataclasses.asdict(cfg))} windows,"
              f" {batches.target_fraction:.0%} of them targets), {cfg.max_iters} iterations")

    def elapsed():
        """Wall-clock seconds since training started (this process's start-up included), over resumes."""
        return elapsed_before + time.perf_counter() - started

    def stop_if_nonfinite(values, check_weights=False):
        """Raise, saving nothing, if a recorded step was not finite (stop mode) or the weights are not."""
        bad_iter = steps.first_nonfinite(values) if cfg.on_nonfinite == 'stop' else None
        if bad_iter is None and not (check_weights and not weights_finite(raw_model)):
            return
        what = f"loss or gradients at iteration {bad_iter}" if bad_iter is not None else \
            f"weights at iteration {iter_num}"
        raise UserError(f"non-finite {what}: training stopped, nothing saved; {last_good()}")

    def last_good():
        if saved_iter is None:
            return "no checkpoint was written: start again with a lower --learning_rate"
        return (f"{ckpt_path} (iteration {saved_iter}) is the last good checkpoint: resume it with a lower"
                f" --learning_rate or --on_nonfinite=skip ({resume_command(cfg, argv, world.launcher())})")

    def save_checkpoints(val_loss, is_best=False):
        """best.pt first, then ckpt.pt: a crash between the two leaves ckpt.pt the older, and resuming it
        redoes the evaluation that wrote best.pt, so best.pt never lags behind ckpt.pt's best_val_loss."""
        nonlocal saved_iter
        values = steps.values()
        stop_if_nonfinite(values, check_weights=True)  # never replace a good checkpoint with a non-finite one
        # every process's RNG states, and the LSTM state of all the streams, whatever process carries them
        rng_states = world.gather(checkpoint.global_rng_state(device))
        hidden = [world.gather_rows(h, dim=1) for h in batch_loss.hidden] if batch_loss.hidden else None
        state = {
            'model_args': dataclasses.asdict(args), 'model': raw_model.state_dict(),
            'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(), 'iter_num': iter_num,
            'best_val_loss': best_val_loss, 'val_loss': val_loss, 'config': dataclasses.asdict(cfg),
            'tokenizer': meta['tokenizer'],
            'data': {'data_dir': cfg.data_dir, f'val_tokens_per_{unit}': tokens_per_unit},
            'rng': {**rng_states[0], 'other_processes': rng_states[1:], 'batches': batches.state(),
                    'hidden': hidden},
            'step_losses': values, 'elapsed_s': elapsed()}
        world.on_main(write_checkpoints, state, is_best)
        saved_iter = iter_num

    def write_checkpoints(state, is_best):
        for path in ([best_path] if is_best else []) + [ckpt_path]:
            try:
                checkpoint.save(path, state)
            except OSError as error:  # a disk that filled up during the run, say: the old file is still whole
                raise UserError(f"cannot write {path} at iteration {iter_num}: {error.strerror}; {last_good()}")

    result = {}
    timer_start, timed_steps, skipped_in_a_row = time.perf_counter(), 0, 0
    with (StopOnSignal() as stop,
          tqdm(total=cfg.max_iters, initial=iter_num, desc='train', unit='it', dynamic_ncols=True,
               disable=not world.is_main) as progress):
        # a signal during a step stops before the next evaluation, not after it; all processes after the same step
        while not (signum := world.agreed_signal(stop.signum)):
            is_eval_step = iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters
            if is_eval_step and iter_num != evaluated_iter:
                stop_if_nonfinite(steps.values(), check_weights=True)  # evaluate, log and save nothing non-finite
                val_loss = evaluate(model, val_docs, cfg, device, dtype, ignore_index, world)
                if not math.isfinite(val_loss):  # finite weights can still be garbage (1e30s), in either mode
                    raise UserError(f"non-finite validation loss at iteration {iter_num}: training stopped,"
                                    f" nothing saved; {last_good()}")
                bits = val_loss / math.log(2)
                train_loss = evaluate(model, train_docs, cfg, device, dtype, ignore_index, world)
                result = {'iter': iter_num, 'val_loss': val_loss, 'val_perplexity': math.exp(min(val_loss, 50)),
                          'val_bits_per_token': bits, f'val_bits_per_{unit}': bits * tokens_per_unit,
                          'eval_train_loss': train_loss, 'elapsed_s': elapsed()}
                if log:
                    log.write(**result)
                world.say(f"iter {iter_num}: val loss {val_loss:.4f}, perplexity {result['val_perplexity']:.2f},"
                          f" {result[f'val_bits_per_{unit}']:.3f} bits/{unit} (train {train_loss:.4f})")
                is_best = val_loss < best_val_loss
                best_val_loss = min(best_val_loss, val_loss)
                save_checkpoints(val_loss, is_best)
                if log:
                    log.plot()
                timer_start, timed_steps = time.perf_counter(), 0  # evaluation time is not training throughput
                signum = world.agreed_signal(stop.signum)  # a signal that came during the evaluation
            if iter_num >= cfg.max_iters or signum:
                break

            lr = learning_rate(iter_num, cfg)
            for group in optimizer.param_groups:
                group['lr'] = lr
            loss, is_skipped = train_step(batch_loss, optimizer, scaler, cfg, micro_steps)
            steps.record(loss)
            skipped_in_a_row = skipped_in_a_row + 1 if is_skipped else 0
            if is_skipped:
                world.say(f"iteration {iter_num}: non-finite loss or gradients, step skipped")
                if skipped_in_a_row == MAX_SKIPPED_IN_A_ROW:
                    raise UserError(f"{skipped_in_a_row} steps in a row had non-finite losses or gradients"
                                    f" (iterations {iter_num + 1 - skipped_in_a_row}-{iter_num}): training"
                                    f" stopped; {last_good()}")
            iter_num += 1
            timed_steps += 1
            progress.update()

            if iter_num % cfg.log_interval == 0:
                values = steps.values()  # the only host sync of the hot loop (but for --on_nonfinite=skip)
                stop_if_nonfinite(values)
                finite = [v for v in values if math.isfinite(v)]
                tokens_per_sec = timed_steps * tokens_per_iter / (time.perf_counter() - timer_start)
                record = {'iter': iter_num, 'lr': lr, 'tokens_per_sec': tokens_per_sec, 'elapsed_s': elapsed()}
                if finite:
                    record['train_loss'] = sum(finite) / len(finite)
                    progress.set_postfix(loss=f"{record['train_loss']:.4f}", tok_s=f'{tokens_per_sec:,.0f}')
                if len(finite) < len(values):
                    record['skipped_steps'] = len(values) - len(finite)
                if log:
                    log.write(**record)
                timer_start, timed_steps, steps = time.perf_counter(), 0, StepLosses(device, iter_num)
    if signum and iter_num < cfg.max_iters:
        if saved_iter != iter_num:
            save_checkpoints(None)
        if world.is_main:
            print(f"{signal.Signals(signum).name}: stopped at iteration {iter_num}, saved {ckpt_path}."
                  f" Resume with: {resume_command(cfg, argv, world.launcher())}", file=sys.stderr)
        raise SystemExit(128 + signum)
    return result


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    return train(parse(TrainConfig, argv), argv)


if __name__ == '__main__':
    run(main)
