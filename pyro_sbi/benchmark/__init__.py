"""Benchmarks: scripts that measure speed and accuracy, never timed tests.

- `python -m pyro_sbi.benchmark.simulation`: the simulation engine's overhead,
  its speed-up on a process pool and on Dask, and the cost of the store.
"""
