"""How training runs on this machine: device, autocast dtype, torch.compile, CPU threads and AdamW's kernels.

train.py's defaults (`auto` for each) pick the fastest path that stays correct; every choice can be forced:

    choice      --key       auto picks
    device      device      cuda if present, else mps, else cpu
    dtype       dtype       CUDA: bfloat16 autocast (float16 on GPUs without bfloat16);
                            CPU: float32; train.py measures bfloat16 autocast against it where the CPU has
                            bfloat16 matrix instructions (AVX-512 BF16 or AMX) and keeps the faster (probe.py)
    compile     compile     torch.compile of the training step's model and loss on CUDA; off on the CPU
                            (the five-minute AKJV configs turn it on: measured there)
    threads     threads     one per physical core, shared among the processes torchrun starts on the machine
                            (OMP_NUM_THREADS, when set, wins)
    AdamW       adamw       fused kernels (one kernel over all parameters) on CPU and CUDA; foreach elsewhere

Why, measured by bench.py's `defaults` section and recorded in docs/results.md: on a CPU without bfloat16 matrix
instructions (this project's AVX2 machine) bfloat16 autocast runs a GPT step about 12x slower than float32,
because every product converts to and from float32 in software; torch.compile of the model alone gave 0.97x
there in float32, and its start-up (seconds to tens of seconds) costs a short run more than it saves; where the
compiled step (the model and its loss) pays on a CPU, for five-minute runs with bfloat16 instructions, is in
docs/training-speed.md. The fused AdamW update is 3-4x faster than the per-parameter loop, though it is
under 1% of a step for these models, whose time is matrix products (65% for the 0.8M GPT) and attention (20%).
"""
import contextlib
import functools
import os
import platform
import sys
import time

import torch

from configurator import UserError


DEVICES = ('auto', 'cpu', 'cuda', 'cuda:N', 'mps')  # N: a GPU's index
DTYPES = ('float32', 'bfloat16', 'float16')
COMPILE = ('auto', True, False)
ADAMW_KERNELS = ('fused', 'foreach', 'for_loop')


def resolve_device(name):
    if name == 'auto':
        if torch.cuda.is_available():
            return 'cuda'
        return 'mps' if torch.backends.mps.is_available() else 'cpu'
    if name.startswith('cuda') and not torch.cuda.is_available():
        raise UserError(f"--device={name} but CUDA is not available here: use --device=cpu or auto")
    if name.startswith('cuda:') and name[5:].isdigit() and int(name[5:]) >= torch.cuda.device_count():
        raise UserError(f"--device={name} but this machine has {torch.cuda.device_count()} CUDA device(s):"
                        f" use cuda:0 to cuda:{torch.cuda.device_count() - 1}, or cuda")
    if name == 'mps' and not torch.backends.mps.is_available():
        raise UserError("--device=mps but MPS (Apple's GPU) is not available here: use --device=cpu or auto")
    return name


def cpu_name():
    """The CPU's model name (Linux's /proc/cpuinfo), else what platform says."""
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_name(device):
    """What the device is, for keys of what was measured or compiled on it: the GPU's name, or the CPU's."""
    if torch.device(device).type == 'cuda':
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def cache_dir():
    """Where answers measured and libraries compiled on this machine are kept: $XDG_CACHE_HOME/slm, else
    ~/.cache/slm (probe.py's dtype answers, decode.py's compiled steps)."""
    return os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache'), 'slm')


def cpu_has_fast_bfloat16():
    """Whether this CPU multiplies bfloat16 matrices in hardware (AVX-512 BF16 or AMX tiles), the case where
    oneDNN's bfloat16 products outrun float32. torch exposes the check as torch.cpu._is_*_supported, private
    functions that a later torch may rename: without them, say no (float32 is never wrong, only slower)."""
    checks = ('_is_avx512_bf16_supported', '_is_amx_tile_supported')
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_dtype(name, device):
    """The autocast dtype: see the table above for auto."""
    if name == 'auto':
        kind = torch.device(device).type
        if kind == 'cuda':
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # on a CPU, bfloat16 pays or not by the model's shape: probe.py measures it
    if name not in DTYPES:
        raise UserError(f"--dtype={name} is not one of auto, {', '.join(DTYPES)}")
    return getattr(torch, name)


def autocast(device, dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def resolve_compile(value, device):
    """Whether to torch.compile: auto compiles on CUDA only; True/False (or 'true'/'false') force it."""
    if isinstance(value, bool):
        return value
    if str(value).lower() in ('true', 'false'):
        return str(value).lower() == 'true'
    if value == 'auto':
        return torch.device(device).type == 'cuda'
    raise UserError(f"--compile={value} must be auto, True or False")


def compile_errors():
    """The exceptions torch raises where it cannot compile (most often: no C++ compiler for inductor's code)."""
    import torch._inductor.exc  # loaded by compiling anyway; here so that an except clause can name it
    return torch._dynamo.exc.BackendCompilerFailed, torch._inductor.exc.InductorError


def compile_failure(error):
    """What one of compile_errors() says, in a line of at most 200 characters, for a one-line message."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]


def compiled(fn, strict=False):
    """fn under torch.compile, made at its first call (seconds to tens of seconds on a CPU; torch keeps the code
    on disk, so the next process makes it sooner). Where torch cannot compile it, one line says so and fn runs
    eagerly from then on: the same results, at the eager speed; strict (bench.py, which must not time eager as
    compiled): the error is raised instead. A failure in compiling the backward alone would come from backward(),
    outside this wrapper; a missing C++ compiler fails the forward first."""
    made = torch.compile(fn)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal made
        try:
            return made(*args, **kwargs)
        except compile_errors() as error:
            if made is fn or strict:
                raise
            print(f"warning: torch could not compile {fn.__name__} ({compile_failure(error)}): running it eagerly; on a CPU"
                  f" install a C++ compiler (g++) for compile's speed, or pass --compile=False", file=sys.stderr,
                  flush=True)
            made = fn
            return fn(*args, **kwargs)
    return call


def physical_cores():
    """Physical cores among the CPUs this process may run on (hyper-threads share a core's arithmetic units,
    so a second thread per core adds contention, not speed). From Linux's CPU topology; elsewhere, the CPUs."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = f'/sys/devices/system/cpu/cpu{cpu}/topology'
        try:
            with open(f'{topology}/physical_package_id') as package, open(f'{topology}/core_id') as core:
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:
            cores.add(cpu)
    return max(1, len(cores))


def is_auto_threads(threads):
    """Whether the thread count is left to resolve_threads: no --threads, no OMP_NUM_THREADS."""
    return not threads and not (os.environ.get('OMP_NUM_THREADS', '').isdigit() and
                                int(os.environ['OMP_NUM_THREADS']) > 0)


def resolve_threads(threads, processes_on_machine=1, busy_cpus=0.0):
    """CPU threads for torch in one process: threads when set; else OMP_NUM_THREADS when the user (or torchrun)
    set it; else the physical cores that other work leaves idle (busy_cpus: see measure_busy_cpus), shared evenly
    among the machine's processes. Why leave busy cores out: torch's threads meet at the end of every operation,
    so one thread that shares its core with other work holds up all the others."""
    if threads < 0:
        raise UserError(f"--threads={threads} must be 0 (one per physical core) or more")
    if threads:
        return threads
    if not is_auto_threads(threads):
        return int(os.environ['OMP_NUM_THREADS'])
    idle_fraction = max(0.0, 1 - busy_cpus / (os.cpu_count() or 1))
    return max(1, round(physical_cores() * idle_fraction) // processes_on_machine)


def measure_busy_cpus(seconds=0.2):
    """How many CPUs' worth of work the machine ran over the next seconds (Linux's /proc/stat), while this
    process waits: the load other work puts on the CPU as training starts. 0.0 where it cannot be read."""
    def times():
        with open('/proc/stat') as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all, idle + iowait
    try:
        total_a, idle_a = times()
        time.sleep(seconds)
        total_b, idle_b = times()
    except (OSError, ValueError, IndexError):
        return 0.0
    return (os.cpu_count() or 1) * (1 - (idle_b - idle_a) / max(1, total_b - total_a))


def busy_note(busy_cpus, threads):
    """A line for a run that starts on a CPU other work keeps busy (None when it does not): what was seen, and
    what --threads does about it."""
    seen = f"the CPU is busy: other work kept {busy_cpus:.1f} of its {os.cpu_count() or 1} CPUs busy as training started"
    if busy_cpus < 0.5 or threads == 1 == physical_cores():  # idle, or one core: nothing to choose
        return None
    if threads < physical_cores():
        return (f"{seen}, so training takes {threads} thread{'s' if threads > 1 else ''} of its"
                f" {physical_cores()} cores: a thread that shares its core with other work holds up the others"
                f" (--threads=N sets the count)")
    return f"{seen}: with {threads} threads a step can run several times slower than with fewer; try --threads=1"


def adamw_kernel(name, device):
    """Which AdamW implementation: auto is fused where torch has it (CPU and CUDA), foreach elsewhere."""
    if name == 'auto':
        return 'fused' if torch.device(device).type in ('cpu', 'cuda') else 'foreach'
    if name not in ADAMW_KERNELS:
        raise UserError(f"--adamw={name} must be auto or one of {', '.join(ADAMW_KERNELS)}")
    return name


def adamw_options(name, device):
    """AdamW's keyword arguments for a kernel choice."""
    kernel = adamw_kernel(name, device)
    return {'fused': kernel == 'fused', 'foreach': kernel == 'foreach'}


SIZE_UNITS = {'KB': 2**10, 'MB': 2**20, 'GB': 2**30, 'TB': 2**40}


def parse_size(text):
    """Bytes from a size such as 2GB, 500MB or 1.5GB (binary units: 1GB = 2**30 bytes)."""
    number, unit = text[:-2], text[-2:].upper()
    try:
        size = float(number) * SIZE_UNITS[unit]
    except (KeyError, ValueError):
        raise UserError(f"--max_memory={text} is not a size: write auto, or a number and a unit (500MB, 2GB)")
    if size <= 0:
        raise UserError(f"--max_memory={text} must be more than zero")
    return int(size)


def free_memory(device):
    """Bytes the device could give this process now: free GPU memory on CUDA; on the CPU, Linux's MemAvailable
    (what can be had without swapping), elsewhere None."""
    if torch.device(device).type == 'cuda':
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open('/proc/meminfo') as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable:'))
    except (OSError, StopIteration):
        return None


# auto's ceiling for one micro-batch on the CPU: past about a GB, a step gets slower per token, not faster
# (fresh multi-GB tensors every step cost page faults and fall out of the caches; bench.py's memory section
# measures it, docs/benchmarking.md has the numbers), so a bigger batch runs as more micro-batches of this.
CPU_MICRO_BATCH_BYTES = 2**30


def memory_budget(max_memory, device):
    """The bytes a training micro-batch's logits and activations may take: --max_memory, or with auto half of
    what the device has free at start-up (the other half leaves room for the weights, the optimizer, the data
    pages and the rest of the machine), on the CPU at most CPU_MICRO_BATCH_BYTES; None when nothing can be
    told (then batches run whole)."""
    if max_memory != 'auto':
        return parse_size(max_memory)
    free = free_memory(device)
    if torch.device(device).type == 'cpu':
        return min(free // 2, CPU_MICRO_BATCH_BYTES) if free else CPU_MICRO_BATCH_BYTES
    return free // 2 if free else None


def rows_per_chunk(batch_size, bytes_per_row, budget):
    """Rows of a micro-batch: as many of a batch's rows as fit in budget, the whole batch when it fits, and a
    micro-batch cut in near-equal parts (500 rows for 180 that fit: 3 chunks of 167, not 180 + 180 + 140)."""
    if budget is None or batch_size * bytes_per_row <= budget:
        return batch_size
    chunks = -(-batch_size * bytes_per_row // budget)
    return max(1, -(-batch_size // chunks))
