"""Benchmarks: scripts that measure speed and accuracy, never timed tests.

- `python -m pyro_sbi.benchmark`: C2ST and seconds on the standard tasks, optionally
  side by side with sbi on the same simulations (:mod:`pyro_sbi.benchmark.compare`);
- `python -m pyro_sbi.benchmark.plot rows.json`: C2ST against budget per task;
- `python -m pyro_sbi.benchmark.amortised`: posterior draws for many observations
  with one amortised guide, and NPE corrected by an NLE's importance weights;
- `python -m pyro_sbi.benchmark.simulation`: the simulation engine's overhead,
  its speed-up on a process pool and on Dask, and the cost of the store;
- `python -m pyro_sbi.benchmark.trials`: the cost of a NUTS gradient of a hierarchical
  drift-diffusion model under plates of subjects × trials, MNLE against the exact
  density;
- `python -m pyro_sbi.benchmark.augment`: the cost of training on the joint score
  against plain training, per gradient step and per training, for NLE, MNLE and NRE;
- `python -m pyro_sbi.benchmark.threads`: one torch thread against torch's default in
  training, SliceMCMC and NUTS gradients, on an idle and a loaded machine.
"""
