"""Benchmarks and the chaos harness: each prints figures; none asserts timings."""
