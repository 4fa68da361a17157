"""Benchmarks: fair step timing, scaling laws, the dtype matrix and its verdicts, the seed studies and the GPU evidence driver."""
