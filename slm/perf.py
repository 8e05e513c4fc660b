"""Performance accounting: model FLOPs from a model's shapes, device peaks, synchronized timing, peak memory.

bench.py measures with these; any script that reports its own speed (tokens/s, MFU) can too.

FLOPs per trained token (forward + backward = 3 x forward, 2 FLOPs per multiply-add):
    GPT   6 * N_matmul + 12 * n_layer * T * n_embd    (attention scores and their weighted sum over T positions,
                                                       counted over the full T x T as PaLM and nanoGPT count it,
                                                       though causal attention needs about half)
    LSTM  6 * N_matmul                                (per layer, gates 4H x (input + H); then the head)
N_matmul counts the weights that multiply every token: Linear layers (the GPT's head is the tied embedding,
counted as the head) and the LSTM's input and recurrent matrices. As in PaLM's MFU, embedding lookups, biases,
LayerNorm, softmax and gate nonlinearities are left out: a few FLOPs per unit against 2 per weight, 2-3% of
the total at bench.py's default sizes and less for wider models.
MFU = FLOPs per token x tokens/s / peak FLOP/s. A CPU's peak is measured (the fastest large matrix product);
a GPU's comes from GPU_PEAK_TFLOPS when it is listed there, else it is measured too.
"""
import ctypes
import gc
import platform
import re
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


# Dense (no sparsity) peak TFLOP/s from NVIDIA's datasheets and whitepapers, which print twice these for
# bfloat16 and float16 "with sparsity". float32 is the CUDA cores' rate, since train.py leaves TF32 off;
# bfloat16 and float16 are tensor-core rates with float32 accumulation. The first entry whose name appears as
# a word in the device's name wins, so specific names come before general ones.
GPU_PEAK_TFLOPS = [
    ('H100 PCIe', {'float32': 51.2, 'bfloat16': 756.0, 'float16': 756.0}),    # H100 datasheet
    ('H100 NVL', {'float32': 60.0, 'bfloat16': 835.0, 'float16': 835.0}),     # H100 datasheet
    ('H100', {'float32': 66.9, 'bfloat16': 989.4, 'float16': 989.4}),         # H100 SXM5
    ('H200 NVL', {'float32': 60.0, 'bfloat16': 835.0, 'float16': 835.0}),     # H200 datasheet
    ('H200', {'float32': 66.9, 'bfloat16': 989.4, 'float16': 989.4}),         # H200 SXM: H100 SXM's compute
    ('GH200', {'float32': 66.9, 'bfloat16': 989.4, 'float16': 989.4}),        # GH200 datasheet
    ('A100', {'float32': 19.5, 'bfloat16': 312.0, 'float16': 312.0}),         # A100 datasheet, SXM and PCIe
    ('L40S', {'float32': 91.6, 'bfloat16': 362.05, 'float16': 362.05}),       # L40S datasheet
    ('L40', {'float32': 90.5, 'bfloat16': 181.05, 'float16': 181.05}),        # L40 datasheet
    ('L4', {'float32': 30.3, 'bfloat16': 121.0, 'float16': 121.0}),           # L4 datasheet
    ('RTX 4090', {'float32': 82.6, 'bfloat16': 165.2, 'float16': 165.2}),     # Ada whitepaper
    ('RTX 3090', {'float32': 35.6, 'bfloat16': 71.0, 'float16': 71.0}),       # Ampere GA102 whitepaper
    ('V100-PCIE', {'float32': 14.0, 'float16': 112.0}),                       # V100 datasheet; no bfloat16
    ('V100', {'float32': 15.7, 'float16': 125.0}),                            # V100 SXM2
    ('T4', {'float32': 8.1, 'float16': 65.0}),                                # T4 datasheet
]


# ---------------------------------------------------------------------------------------------------------
# devices: synchronization, memory, names, peak FLOP/s

def synchronize(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def reset_peak_memory(device):
    gc.collect()  # the last measurement's model and optimizer are garbage now: not part of this peak
    if torch.device(device).type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return
    release_free_heap()
    try:  # Linux: writing 5 to clear_refs resets the process's peak resident set size (VmHWM)
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
    except OSError:
        pass  # elsewhere the peak is the process's peak so far


def release_free_heap():
    """Hand the heap that freed tensors left back to the operating system (glibc's malloc_trim), so that the
    resident set, and the next peak measured from it, holds only what is in use. Elsewhere a no-op."""
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_mb(device):
    """Peak since reset_peak_memory: tensors allocated on CUDA, the process's resident set on the CPU."""
    if torch.device(device).type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open('/proc/self/status') as f:
            return next(int(line.split()[1]) for line in f if line.startswith('VmHWM:')) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / 2**20 if sys.platform == 'darwin' else peak / 1024


def device_name(device):
    if torch.device(device).type == 'cuda':
        return torch.cuda.get_device_name(device)
    try:
        with open('/proc/cpuinfo') as f:
            name = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    return f"{name}, torch threads: {torch.get_num_threads()}"


def datasheet_tflops(name, dtype_name):
    """(peak TFLOP/s, table entry) of a GPU from GPU_PEAK_TFLOPS, or (None, None) if it is not listed."""
    for entry, peaks in GPU_PEAK_TFLOPS:
        if re.search(rf'\b{re.escape(entry)}\b', name) and dtype_name in peaks:
            return peaks[dtype_name], entry
    return None, None


def matmul_tflops(device, dtype, target_s, max_n, repeats):
    """(TFLOP/s, n, op) of the fastest n x n product, n doubled from 256 until one takes target_s (or max_n).

    The op is the faster at n = 256 of a @ b and F.linear (what every Linear layer calls): on a CPU without
    bfloat16 instructions they take different kernels, F.linear's several times faster.
    """
    ops = {'a @ b': torch.matmul, 'F.linear': F.linear}
    n, op = 256, None
    while True:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        times = {name: per_call_seconds(lambda f=f: f(a, b), device, target_s, repeats)
                 for name, f in ops.items() if op in (None, name)}
        op = min(times, key=times.get)
        if times[op] >= target_s or n >= max_n:
            return 2 * n**3 / times[op] / 1e12, n, op
        n *= 2


def per_call_seconds(fn, device, budget_s, repeats):
    """Least seconds per call of fn over repeats groups of calls; a group lasts about budget_s, so that a short
    call on a GPU is not measured as its launch latency. The least, not the median: a peak is wanted."""
    synchronize(device)
    start = time.perf_counter()
    fn()  # warm-up (kernel selection, first touch of memory), and an estimate of one call
    synchronize(device)
    calls = max(1, min(100, int(budget_s / max(time.perf_counter() - start, 1e-6))))
    best = float('inf')
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def median_seconds(fn, device, repeats):
    """Median wall time of fn() over repeats calls, the device synchronized before and after each."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------------------
# FLOPs

def matmul_params(model):
    """Weights that multiply every token: Linear weights (per use, so a tied head counts) and LSTM matrices."""
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            total += module.weight.numel()
        elif isinstance(module, nn.LSTM):
            total += sum(p.numel() for name, p in module.named_parameters() if name.startswith('weight_'))
    return total


def train_flops_per_token(model, seq_len):
    """FLOPs of forward + backward per token of sequences seq_len long (see the module docstring)."""
    flops = 6 * matmul_params(model)
    if model.args.model_type == 'gpt':
        flops += 12 * model.args.n_layer * seq_len * model.args.n_embd
    return flops


def training_bytes_per_token(args, dtype_bytes=4):
    """An upper estimate of the memory one token of a batch holds during forward and backward: its logits
    (the float32 copy the loss takes, the log-softmax saved for backward, and their gradient) and the
    activations each layer saves for backward (GPT: about 17 x n_embd values a layer for LayerNorms, q, k, v,
    attention output, projections and the 4x MLP, plus n_head attention rows of block_size for a masked
    attention; LSTM: gates, cell and hidden states, 8 x hidden). For bounding a micro-batch, not for reporting."""
    logits = args.vocab_size * (dtype_bytes + 3 * 4)
    if args.model_type == 'gpt':
        per_layer = 17 * args.n_embd * dtype_bytes + 2 * args.n_head * args.block_size * 4
    else:
        per_layer = 8 * (args.n_hidden or args.n_embd) * 4 + args.n_embd * dtype_bytes
    return logits + args.n_layer * per_layer + 4 * args.n_embd * dtype_bytes
