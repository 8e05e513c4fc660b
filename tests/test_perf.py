import torch

from model import ModelArgs, build_model
from slm import perf


def test_flops_per_token_from_the_shapes():
    gpt = build_model(ModelArgs(model_type='gpt', vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=16))
    # per layer qkv 16x48 + proj 16x16 + mlp 16x64 + 64x16, and the head (tied to the embedding) 16x100
    matmul = 2 * (16 * 48 + 16 * 16 + 2 * 16 * 64) + 16 * 100
    assert perf.matmul_params(gpt) == matmul
    assert perf.train_flops_per_token(gpt, 32) == 6 * matmul + 12 * 2 * 32 * 16
    lstm = build_model(ModelArgs(model_type='lstm', vocab_size=100, n_layer=2, n_embd=16, n_hidden=24))
    # gates: layer 1 4*24 x (16 + 24), layer 2 4*24 x (24 + 24); head 24 x 100 (untied: sizes differ)
    matmul = 96 * 40 + 96 * 48 + 24 * 100
    assert perf.matmul_params(lstm) == matmul and perf.train_flops_per_token(lstm, 32) == 6 * matmul


def test_gpu_peak_table_matches_device_names():
    assert perf.datasheet_tflops('NVIDIA H100 80GB HBM3', 'bfloat16') == (989.4, 'H100')
    assert perf.datasheet_tflops('NVIDIA H100 PCIe', 'float32') == (51.2, 'H100 PCIe')
    assert perf.datasheet_tflops('NVIDIA A100-SXM4-80GB', 'bfloat16') == (312.0, 'A100')
    assert perf.datasheet_tflops('NVIDIA GH200 480GB', 'bfloat16') == (989.4, 'GH200')
    assert perf.datasheet_tflops('NVIDIA L40S', 'bfloat16') == (362.05, 'L40S')
    assert perf.datasheet_tflops('NVIDIA L4', 'float32') == (30.3, 'L4')
    assert perf.datasheet_tflops('Tesla V100-PCIE-32GB', 'float16') == (112.0, 'V100-PCIE')
    assert perf.datasheet_tflops('Tesla T4', 'bfloat16') == (None, None)  # no bfloat16: measured instead
    assert perf.datasheet_tflops('NVIDIA GeForce GTX 1080', 'float32') == (None, None)


def test_matmul_peak_is_measured():
    tflops, n, op = perf.matmul_tflops('cpu', torch.float32, target_s=0.001, max_n=256, repeats=1)
    assert n == 256 and op in ('a @ b', 'F.linear') and 0 < tflops < 100


def test_cpu_peak_memory_sees_a_new_allocation():
    perf.reset_peak_memory('cpu')
    before = perf.peak_memory_mb('cpu')
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written, so resident
    assert perf.peak_memory_mb('cpu') >= before + 60
    del block
