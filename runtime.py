"""How training runs on this machine: device, autocast dtype, torch.compile, CPU threads and AdamW's kernels.

train.py's defaults (`auto` for each) pick the fastest path that stays correct; every choice can be forced:

    choice      --key       auto picks
    device      device      cuda if present, else mps, else cpu
    dtype       dtype       CUDA: bfloat16 autocast (float16 on GPUs without bfloat16);
                            CPU: bfloat16 autocast where the CPU has bfloat16 matrix instructions (AVX-512 BF16
                            or AMX), float32 elsewhere
    compile     compile     torch.compile on CUDA; off on the CPU
    threads     threads     one per physical core, shared among the processes torchrun starts on the machine
                            (OMP_NUM_THREADS, when set, wins)
    AdamW       adamw       fused kernels (one kernel over all parameters) on CPU and CUDA; foreach elsewhere

Why, measured by bench.py's `defaults` section and recorded in the README: on a CPU without bfloat16 matrix
instructions (this project's AVX2 machine) bfloat16 autocast runs a GPT step about 12x slower than float32,
because every product converts to and from float32 in software; torch.compile gave 0.97x on the CPU while its
start-up (tens of seconds) costs a short run more than it saves; the fused AdamW update is 3-4x faster than
the per-parameter loop, though it is under 1% of a step for these models, whose time is matrix products (65%
for the 0.8M GPT) and attention (20%).
"""
import contextlib
import os

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
        return torch.bfloat16 if kind == 'cpu' and cpu_has_fast_bfloat16() else torch.float32
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


def resolve_threads(threads, processes_on_machine=1):
    """CPU threads for torch in one process: threads when set; else OMP_NUM_THREADS when the user (or torchrun)
    set it; else the physical cores shared evenly among the machine's processes."""
    if threads < 0:
        raise UserError(f"--threads={threads} must be 0 (one per physical core) or more")
    if threads:
        return threads
    if os.environ.get('OMP_NUM_THREADS', '').isdigit() and int(os.environ['OMP_NUM_THREADS']) > 0:
        return int(os.environ['OMP_NUM_THREADS'])
    return max(1, physical_cores() // processes_on_machine)


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
