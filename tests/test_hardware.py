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


def _cached_peaks(tmp_path, monkeypatch, peaks):
    "A cache holding these measured CPU peaks (TFLOP/s by dtype), as if probed."
    monkeypatch.setenv('STACKWISE_CACHE', str(tmp_path))
    cpu = torch.device('cpu')
    hardware.write_json(hardware._cache_file(), {hardware._machine_key(cpu, k): dict(tflops=v) for k, v in peaks.items()})
    return cpu


def test_mfu_of_an_emulated_dtype_is_against_the_fp32_peak(tmp_path, monkeypatch):
    "fp16 on a CPU without fp16 units measures far below fp32: the work is bounded by fp32, so MFU never exceeds 1 through it."
    cpu = _cached_peaks(tmp_path, monkeypatch, dict(fp32=0.1, bf16=0.3, fp16=0.002))
    assert hardware.mfu_peak_tflops('fp16', cpu) == 0.1
    assert hardware.mfu(0.05e12, torch.float16, cpu) == pytest.approx(0.5)  # against the fp16 probe it read 25
    assert hardware.mfu_peak_tflops('bf16', cpu) == 0.3  # bf16 in hardware (AVX512-BF16, AMX) keeps its own, higher peak
    assert hardware.mfu_peak_tflops('fp32', cpu) == 0.1


def test_probe_announces_itself_and_keeps_slow_dtypes_small(tmp_path, monkeypatch, capsys):
    "The probe says on stderr what it measures and where it is cached; an emulated dtype is not timed at the full size."
    monkeypatch.setenv('STACKWISE_CACHE', str(tmp_path))
    sizes = {}
    rates = dict(fp32=0.1, fp16=0.002)  # TFLOP/s: one 2048^3 fp16 matmul would take about 9 s
    monkeypatch.setattr(hardware, 'measure_matmul_tflops', lambda key, n, dev, min_time: sizes.setdefault(key, []).append(n) or rates[key])
    assert hardware.peak_tflops('fp16', 'cpu') == 0.002
    err = capsys.readouterr().err
    assert "stackwise: measuring this CPU's fp16 matmul peak once" in err and str(tmp_path/'peak_tflops.json') in err
    assert max(sizes['fp16']) < 2048
    hardware.peak_tflops('fp32', 'cpu')
    assert max(sizes['fp32']) == 2048
    hardware.peak_tflops('fp16', 'cpu')
    assert capsys.readouterr().err.count('measuring') == 1  # fp32 announced once; the cached fp16 silent
