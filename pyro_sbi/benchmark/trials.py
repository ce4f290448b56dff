r"""Benchmark of learned likelihoods under plates of many trials: the cost of a gradient.

Run `python -m pyro_sbi.benchmark.trials` (`--quick` for a short run). For a
hierarchical drift-diffusion model (group means and spreads, subjects' parameters,
i.i.d. trials per subject; the shape of `examples/ddm_hierarchical.py`) at subjects ×
trials 5 × 100, 20 × 200 and 50 × 400, it times one NUTS potential plus its gradient,
in this process and on one torch thread, for

- `MNLE(discrete=[1], log_transform=True)` with each subject's parameters shared by its
  trials (a stride-0 view: what Pyro's plates give), so whatever depends on the
  parameters alone runs once per subject;
- the same MNLE with the parameters copied to every trial (the cost without that);
- the exact first-passage-time density (`pyro_sbi.tasks.ddm.DriftDiffusion`).

The cost does not depend on how well the MNLE is trained, so it is trained briefly.
Ratios to the exact density's time in the same run are what to compare across
machines.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import init_to_value
from pyro.infer.mcmc.util import initialize_model

from pyro_sbi import MNLE, SimulatorDistribution
from pyro_sbi.tasks import ddm

SHAPES = ((5, 100), (20, 200), (50, 400))
LOW, HIGH = torch.tensor(ddm.LOW), torch.tensor(ddm.HIGH)


def hierarchical(likelihood: MNLE | None, subjects: int, trials: int, *, copy: bool = False):
    """A hierarchical DDM; the exact density when `likelihood` is None.

    `copy=True` hands the simulator site each subject's parameters copied to every
    trial instead of the broadcast view.
    """

    def model(x=None):
        mu = pyro.sample("mu", dist.Normal(torch.tensor([0.0, 0.0, 0.0, -1.5]), 1.0).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(0.3 * torch.ones(4)).to_event(1))
        with pyro.plate("subjects", subjects):
            u = pyro.sample("u", dist.Normal(mu, sigma).to_event(1))
            theta = LOW + (HIGH - LOW) * u.sigmoid()
            with pyro.plate("trials", trials, dim=-2):
                if likelihood is None:
                    fn = ddm.DriftDiffusion(*theta.unbind(-1))
                else:
                    if copy:
                        theta = theta.expand(trials, subjects, 4).contiguous()
                    fn = SimulatorDistribution(ddm.simulate_ddm, theta, likelihood)
                return pyro.sample("x", fn, obs=x)

    return model


def gradient_seconds(model, x: torch.Tensor, truth: torch.Tensor, repeats: int) -> float:
    """Median seconds of one potential and its gradient, at the subjects' true parameters."""
    u = torch.logit((truth - LOW) / (HIGH - LOW))
    start = init_to_value(values={"u": u, "mu": u.mean(0), "sigma": 0.3 * torch.ones(4)})
    params, potential, _, _ = initialize_model(model, (x,), init_strategy=start)
    point = {name: value.detach().clone().requires_grad_() for name, value in params.items()}

    def once():
        value = potential(point)
        torch.autograd.grad(value, list(point.values()))

    once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark and prints a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    repeats = 5 if args.quick else 20
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    theta = ddm.prior().sample((10_000,))
    likelihood = MNLE(discrete=[1], log_transform=True)
    likelihood.fit(theta, ddm.simulate_ddm(theta), max_epochs=3, progress=False, seed=0)

    print(f"\ntorch {torch.__version__}, {os.cpu_count()} cores, 1 torch thread, "
          f"Python {platform.python_version()}\n")  # fmt: skip
    print("| subjects × trials | MNLE, shared (ms) | MNLE, copied (ms) | exact (ms) "
          "| shared / exact | copied / exact |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for subjects, trials in SHAPES:
        truth = ddm.prior().sample((subjects,))
        x = ddm.simulate_ddm(truth.expand(trials, subjects, 4).reshape(-1, 4))
        x = x.reshape(trials, subjects, 2)
        seconds = {
            "shared": gradient_seconds(
                hierarchical(likelihood, subjects, trials), x, truth, repeats
            ),
            "copied": gradient_seconds(
                hierarchical(likelihood, subjects, trials, copy=True), x, truth, repeats
            ),
            "exact": gradient_seconds(hierarchical(None, subjects, trials), x, truth, repeats),
        }
        ms = {key: 1e3 * value for key, value in seconds.items()}
        print(f"| {subjects} × {trials} | {ms['shared']:.1f} | {ms['copied']:.1f} | "
              f"{ms['exact']:.1f} | {seconds['shared'] / seconds['exact']:.1f} | "
              f"{seconds['copied'] / seconds['exact']:.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
