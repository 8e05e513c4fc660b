"""What bench.py's sections measure with: the resolved run (Context), a training step built as train.py builds
it (Trainer), and the registry a section joins with @section. The sections are in slm/bench/train.py (peak FLOP/s
and the training step), generate.py (sampling and generation), memory.py and recipe.py.
"""
import dataclasses
import time

import torch

from configurator import UserError
from model import MODELS, ModelArgs, build_model
from slm import batching, loss, optim, perf, runtime, training


MODEL_OPTIONS = {f.name for f in dataclasses.fields(ModelArgs)}


class Unsupported(Exception):
    """A configuration this device or build cannot run: listed as skipped, with the reason."""


def dtype_name(dtype):
    return str(dtype).removeprefix('torch.')


# ---------------------------------------------------------------------------------------------------------
# what every section measures with

class Context:
    """The resolved run: devices, models, dtypes, the token memmap, and the peaks measured so far."""

    def __init__(self, cfg, documents, vocab_size, pad_id):
        self.cfg, self.documents, self.vocab_size, self.pad_id = cfg, documents, vocab_size, pad_id
        self.tokens, self.ignore_index = documents.tokens, batching.IGNORE_INDEX
        self.devices = resolve_devices(cfg.device)
        self.models = list(MODELS) if cfg.model == 'all' else [cfg.model]
        self.compile_modes = {'both': [False, True], 'True': [True], 'False': [False]}[cfg.compile]
        self.peaks = {}

    def dtypes(self, device):
        """The autocast dtypes timed on device."""
        if self.cfg.dtype != 'both':
            return [runtime.resolve_dtype(self.cfg.dtype, device)]
        if torch.device(device).type == 'cuda' and not torch.cuda.is_bf16_supported():
            return [torch.float32, torch.float16]
        return [torch.float32, torch.bfloat16]

    def training_dtype(self, device):
        """The dtype train.py trains in on device (CUDA: bfloat16, CPU: float32) if it is timed, else the first."""
        auto = runtime.resolve_dtype('auto', device)
        return auto if auto in self.dtypes(device) else self.dtypes(device)[0]

    def shape(self, **overrides):
        """The model shape measured: --n_layer, --n_head, --n_embd, --block_size, or overrides of them."""
        return {k: overrides.get(k, getattr(self.cfg, k)) for k in ('n_layer', 'n_head', 'n_embd', 'block_size')}

    def train_config(self, model_type, batch_size, windowing=None, shape=None, adamw='auto', max_memory='auto',
                     recipe=None):
        """The train.py config of a measurement: its optimizer settings and clipping are what is timed. recipe:
        the RECIPE options of a recipe file (see training.recipe); None: train.py's defaults."""
        cfg = training.TrainConfig(data_dir=self.cfg.data_dir or 'random tokens', model_type=model_type,
                                **(shape or self.shape()), batch_size=batch_size, seed=self.cfg.seed,
                                windowing=windowing or self.cfg.windowing, adamw=adamw, max_memory=max_memory,
                                **(recipe or {}))
        training.check_config(cfg)
        return cfg

    def model_args(self, model_type, shape=None, vocab_size=None, recipe=None):
        # the recipe's model options, else train.py's defaults (which may not be ModelArgs' GPT-2 ones)
        options = {k: (recipe or {}).get(k, getattr(training.TrainConfig, k)) for k in training.RECIPE if k in MODEL_OPTIONS}
        return ModelArgs(model_type=model_type, vocab_size=vocab_size or self.vocab_size, pad_id=self.pad_id,
                         **(shape or self.shape()), **options)

    def peak(self, device, dtype):
        """The peak MFU divides by, and the matmul measured (once per device and dtype)."""
        if (device, dtype) not in self.peaks:
            quick = self.cfg.quick
            measured, n, op = perf.matmul_tflops(device, dtype, target_s=0.005 if quick else 0.05,
                                                 max_n=512 if quick else 16384, repeats=min(3, self.cfg.repeats))
            tflops, source = measured, 'measured matmul'
            if torch.device(device).type == 'cuda':
                listed, entry = perf.datasheet_tflops(perf.device_name(device), dtype_name(dtype))
                if listed:
                    tflops, source = listed, f'datasheet: {entry}'
            self.peaks[device, dtype] = {'peak_tflops': tflops, 'source': source, 'matmul_tflops': measured,
                                         'matmul_n': n, 'matmul_op': op}
        return self.peaks[device, dtype]


def resolve_devices(name):
    if name == 'all':
        return ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
    device = runtime.resolve_device(name)
    if torch.device(device).type not in ('cpu', 'cuda'):
        raise UserError(f"--device={name} means {device} here, which bench.py does not time: use cpu or cuda")
    return [device]


class Trainer:
    """A fresh model, optimizer and batch source built as train.py builds them, micro-batches under --max_memory
    included; step() is one optim.train_step. vocab_size: another head than the data's (the tokens stay);
    recipe: the RECIPE options of a recipe file (None: train.py's defaults)."""

    def __init__(self, ctx, model_type, device, dtype, batch_size, compiled, windowing=None, shape=None,
                 adamw='auto', vocab_size=None, max_memory='auto', recipe=None):
        self.tcfg = ctx.train_config(model_type, batch_size, windowing, shape, adamw, max_memory, recipe)
        self.batches = training.make_batches(self.tcfg, ctx.documents, 'train', self.tcfg.seed, device)
        torch.manual_seed(ctx.cfg.seed)
        self.raw_model = build_model(ctx.model_args(model_type, shape, vocab_size, recipe)).to(device)
        self.optimizer = optim.make_optimizer(self.raw_model, self.tcfg, device)
        self.chunk_rows = loss.micro_batch_rows(self.raw_model.args, self.tcfg, device, dtype, batch_size)[0]
        self.batch_loss = loss.BatchLoss(self.raw_model, self.batches, device, dtype, ctx.ignore_index,
                                          rows_per_chunk=self.chunk_rows, compiled=compiled,
                                          strict_compile=True)  # a step that cannot compile: skipped, not eager
        self.scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
        self.device, self.dtype, self.compiled, self.batch_size = device, dtype, compiled, batch_size
        self.flops_per_token = perf.train_flops_per_token(self.raw_model, self.tcfg.block_size)
        self.peak = ctx.peak(device, dtype)

    def step(self):
        optim.train_step(self.batch_loss, self.optimizer, self.scaler, self.tcfg)

    def warm_up(self, steps):
        """Run the untimed steps; return the first one's seconds (compilation included when compiled)."""
        perf.synchronize(self.device)
        start = time.perf_counter()
        try:
            self.step()
            perf.synchronize(self.device)
        except RuntimeError as error:  # no kernel for this dtype here, out of memory, ...: the first step tells
            raise Unsupported(str(error).strip().split('. ')[0][:200])
        first = time.perf_counter() - start
        for _ in range(steps - 1):
            self.step()
        return first

    def close(self):
        if self.compiled:
            torch.compiler.reset()  # drop the compiled graphs: the next measurement compiles afresh

    def throughput(self, seconds_per_iter):
        """The rates of a step that takes seconds_per_iter: per second, achieved FLOP/s and MFU."""
        tokens_per_s = self.batch_size * self.tcfg.block_size / seconds_per_iter
        achieved = self.flops_per_token * tokens_per_s / 1e12
        return {'ms_per_iter': seconds_per_iter * 1e3, 'samples_per_s': self.batch_size / seconds_per_iter,
                'tokens_per_s': tokens_per_s, 'flops_per_token': self.flops_per_token, 'tflops': achieved,
                'peak_tflops': self.peak['peak_tflops'], 'mfu': achieved / self.peak['peak_tflops']}


# ---------------------------------------------------------------------------------------------------------
# sections: each plans its jobs; a job measures one thing and returns one row (a dict of plain values)

@dataclasses.dataclass
class Job:
    label: str          # what the progress bar shows
    device: str
    dtype: object       # the dtype whose peak FLOP/s the row needs (measured before the job), or None
    run: object         # () -> row


@dataclasses.dataclass
class Section:
    name: str
    title: str
    columns: list            # (row key, header, format) of the table; every row has at least these keys
    plan: object             # ctx -> [Job]
    conclude: object = None  # (rows, ctx) -> (summary rows, conclusion lines)


SECTIONS = {}


def section(name, title, columns, conclude=None):
    def register(plan):
        SECTIONS[name] = Section(name, title, columns, plan, conclude)
        return plan
    return register
