"""Peak FLOP/s: datasheet figures match the published ones; the probe agrees with a naive timing."""
import time

import pytest
import torch

from stackwise import hardware
from stackwise.models.counting import train_flops_per_token


@pytest.mark.parametrize('name,dtype,tflops', [
    ('NVIDIA H100 80GB HBM3', 'bf16', 989), ('NVIDIA H100 80GB HBM3', 'tf32', 495), ('NVIDIA H100 80GB HBM3', 'fp32', 67),
    ('NVIDIA H200', 'bf16', 989), ('NVIDIA H200', 'fp8', 1979), ('NVIDIA A100-SXM4-80GB', 'bf16', 312),
    ('NVIDIA A100-SXM4-80GB', 'tf32', 156), ('NVIDIA A100-SXM4-80GB', 'fp32', 19.5), ('NVIDIA A40', 'fp32', 37.4),
    ('NVIDIA RTX A6000', 'fp32', 38.7)])
def test_datasheet_matches_published(name, dtype, tflops):
    assert hardware.datasheet_tflops(name, dtype) == pytest.approx(tflops, rel=0.01)


def test_probe_agrees_with_naive_timing():
    n = 512
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t0 = time.perf_counter(); reps = 20
    for _ in range(reps): a @ b
    naive = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12
    probe = hardware.measure_matmul_tflops('fp32', n, 'cpu', min_time=0.2)
    assert naive / 3 < probe < naive * 3


def test_peak_is_cached_per_machine():
    first = hardware.peak_tflops('fp32', 'cpu')
    t0 = time.perf_counter()
    assert hardware.peak_tflops('fp32', 'cpu') == first
    assert time.perf_counter() - t0 < 0.05
    assert hardware.mfu(first * 1e12 * 0.4, 'fp32', 'cpu') == pytest.approx(0.4)


def test_flops_per_token_matches_palm_formula():
    # GPT-2 small as nanoGPT counts it: 6N + 12 L d T with N = non-position-embedding parameters
    assert train_flops_per_token(124_439_808 - 1024 * 768, 12, 768, 1024) == 6 * 123_653_376 + 12 * 12 * 768 * 1024
