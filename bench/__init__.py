"""Benchmarks: each module's main() writes bench/results/<name>.json (run all with `make bench`)."""
