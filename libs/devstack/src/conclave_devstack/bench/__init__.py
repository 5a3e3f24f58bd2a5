"""Benchmarks run by ``make bench``: each prints JSON; none is a pass/fail test."""
