"""Benchmarks that drive real syncd components and print figures."""
