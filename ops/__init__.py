"""Operational tooling for Popoto: CLI, demo and benchmarks."""
