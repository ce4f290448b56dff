"""Checking and comparing simulator models: ArviZ, LOO, SBC and posterior predictive checks.

Two simulators compete to explain the same data: trials whose second coordinate has
skewed noise (the truth) and a simpler simulator with Gaussian noise. Each becomes a
Pyro model with a learned likelihood (NLE). The script then

1. runs NUTS on both and builds a full ArviZ InferenceData for each
   (`to_inference_data`: posterior, sample stats, pointwise log-likelihood per trial,
   posterior predictive from the real simulator, observed data);
2. prints an ArviZ summary, LOO for each model and `az.compare` of the two;
3. checks the winning model with a posterior predictive check (p-values of summary
   statistics) and with simulation-based calibration (rank ECDFs, expected coverage),
   running the SBC data sets on two worker processes.

    python examples/model_checking.py               # about 8 minutes on 2 CPU cores
    python examples/model_checking.py --smoke-test  # seconds, for the tests
"""

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no OpenMP spin-waiting

import arviz as az  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import multiprocessing  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
import zuko  # noqa: E402
from pyro.infer import MCMC, NUTS  # noqa: E402

from pyro_sbi import NLE, SimulatorDistribution, to_inference_data, train  # noqa: E402
from pyro_sbi.diagnostics import ppc, sbc  # noqa: E402
from pyro_sbi.plot import plot_coverage  # noqa: E402

TRIALS = 40


def skewed(theta: torch.Tensor) -> torch.Tensor:
    """theta (n, 2) -> x (n, 2): the second coordinate has skewed (log-normal) noise."""
    eps = torch.randn_like(theta)
    return torch.stack(
        [theta[:, 0] + 0.3 * eps[:, 0], theta[:, 1] + 0.4 * (torch.exp(0.8 * eps[:, 1]) - 1)], -1
    )


def gaussian(theta: torch.Tensor) -> torch.Tensor:
    """theta (n, 2) -> x (n, 2): symmetric Gaussian noise of a similar spread."""
    return theta + torch.tensor([0.3, 0.45]) * torch.randn_like(theta)


likelihoods = {"skewed": NLE(zuko.flows.MAF), "gaussian": NLE(zuko.flows.MAF)}


def model_skewed(x=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("trials", TRIALS):
        return pyro.sample("x", SimulatorDistribution(skewed, theta, likelihoods["skewed"]), obs=x)


def model_gaussian(x=None):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("trials", TRIALS):
        site = SimulatorDistribution(gaussian, theta, likelihoods["gaussian"])
        return pyro.sample("x", site, obs=x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny budgets, seconds")
    parser.add_argument("--output", type=Path, default=Path("examples/output"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    smoke = args.smoke_test
    # smoke: enough training and warm-up that no chain sticks (LOO needs varying draws)
    num_simulations, epochs = (1000, 20) if smoke else (10_000, 1000)
    warmup, samples = (50, 50) if smoke else (300, 500)
    datasets, draws = (4, 20) if smoke else (100, 100)
    args.output.mkdir(parents=True, exist_ok=True)

    pyro.set_rng_seed(0)
    theta_true = torch.tensor([0.4, -0.3])
    x_obs = skewed(theta_true.expand(TRIALS, 2))

    idatas = {}
    for name, model in (("skewed", model_skewed), ("gaussian", model_gaussian)):
        start = time.perf_counter()
        train(model, num_simulations=num_simulations, seed=1, progress=False,
              fit_options={"max_epochs": epochs})  # fmt: skip
        mcmc = MCMC(NUTS(model), num_samples=samples, warmup_steps=warmup, disable_progbar=True)
        mcmc.run(x_obs)
        idatas[name] = to_inference_data(mcmc, model, x_obs)
        print(f"{name}: trained and sampled in {time.perf_counter() - start:.1f} s")
    print(az.summary(idatas["skewed"], var_names=["theta"], kind="stats"))

    for name, idata in idatas.items():
        print(f"\nLOO of the {name} simulator:\n{az.loo(idata)}")
    comparison = az.compare(idatas)
    print(f"\n{comparison}")
    az.plot_compare(comparison)
    plt.savefig(args.output / "model_checking_compare.png", dpi=80)

    p_values, figure = ppc(idatas["skewed"], plot=True)
    print("\nposterior predictive p-values of the skewed simulator:")
    print("  " + ", ".join(f"{k} {v:.2f}" for k, v in p_values.items()))
    figure.savefig(args.output / "model_checking_ppc.png", dpi=80)

    # SBC: the data sets run on two worker processes forked after training.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        result = sbc(
            model_skewed, num_datasets=datasets, num_draws=draws, warmup_steps=warmup,
            executor=pool, seed=0, progress=False,
        )  # fmt: skip
    print(f"\nSBC: {datasets} data sets in {result.seconds:.0f} s on 2 processes")
    print("  rank uniformity p-values: "
          + ", ".join(f"{k} {v:.2f}" for k, v in result.p_values().items()))  # fmt: skip
    coverage = result.coverage([0.5, 0.9])
    print("  coverage of 50% / 90% regions: " + ", ".join(
        f"{k} {v[0]:.2f}/{v[1]:.2f}" for k, v in coverage.items() if k != "level"
    ))  # fmt: skip
    result.plot().savefig(args.output / "model_checking_sbc.png", dpi=80)
    plot_coverage(result).savefig(args.output / "model_checking_coverage.png", dpi=80)
    idatas["skewed"].to_netcdf(args.output / "model_checking_skewed.nc")
    print(f"figures and the InferenceData written to {args.output}/model_checking_*")


if __name__ == "__main__":
    main()
