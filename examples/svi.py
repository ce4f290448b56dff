"""Variational inference (SVI) on a simulator model, checked against MCMC.

Population pharmacokinetics: each of 16 patients gets a dose of a drug on 3 occasions,
and its blood concentration is measured 6 and 12 hours after each dose (sparse
sampling, as in therapeutic drug monitoring). Patient s has a clearance CL_s and a
volume of distribution V_s, drawn around population values; after an intravenous dose
D the concentration decays as C(t) = D / V exp(-CL / V t). From one occasion to the
next the clearance varies at random (inter-occasion variability: food, other drugs),
and the assay adds skewed noise, so the likelihood of one occasion's two
log-concentrations is an integral nobody writes down: the simulator is a black box,
and NLE learns it. The model is hierarchical:

    mu ~ N(mu_0, 0.5),  sigma ~ HalfNormal(0.3),  theta_s = (log CL_s, log V_s) ~ N(mu, sigma),
    x_so ~ simulator(theta_s)   for patients s and occasions o.

The script trains the likelihood with `train`, then fits the posterior three ways on
the same learned likelihood:

1. SVI with Pyro's `AutoNormal` guide (mean field: independent normals on the
   unconstrained scale);
2. SVI with a normalising-flow guide: an inverse autoregressive flow from zuko over
   all latent variables at once, wrapped as a Pyro autoguide (`AutoZukoIAF` below), so
   it captures correlations and skew;
3. NUTS, the reference.

It prints posterior means and sds, the C2ST of each guide against NUTS, the ELBOs and
the wall times, and plots the ELBO traces and the marginals of the three.

When is SVI the better choice? NUTS is exact in the limit and the reference here, but
its cost grows with the number of latent variables and it starts afresh for every
data set. SVI turns inference into optimisation: with many subjects (hundreds of
patients, thousands of latent variables, subsampled plates), or when a fast
approximate answer is enough (exploring models, screening data sets), it is often the
practical option, at the price of an approximation whose quality depends on the
guide. The mean-field guide misses the correlations between the population
parameters and the patients' (the hierarchy) and underestimates the uncertainty of
the population level; the flow guide costs a little more and does better.

ELBO values: with NLE the learned likelihood is a normalised density in x, so the
ELBO is a lower bound on the log evidence of the surrogate model, and the ELBOs of two
guides can be compared (their difference is the difference of their KL divergences
to the posterior). With NRE the site's log_prob is a log-ratio log p(x | theta) -
log p(x), correct in theta only up to a constant: its ELBO gradients are valid, but
the ELBO value is shifted by an unknown amount and means nothing on its own.

    python examples/svi.py               # about 4 minutes on 2 CPU cores
    python examples/svi.py --smoke-test  # seconds, for the tests
"""

import argparse
import math
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: no OpenMP spin-waiting

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402
import zuko  # noqa: E402
from pyro.contrib.zuko import ZukoToPyro  # noqa: E402
from pyro.infer import MCMC, NUTS, SVI, Predictive, Trace_ELBO  # noqa: E402
from pyro.infer.autoguide import AutoContinuous, AutoNormal, init_to_median  # noqa: E402
from pyro.optim import ClippedAdam  # noqa: E402
from torch.distributions import AffineTransform  # noqa: E402

from pyro_sbi import NLE, SimulatorDistribution, c2st, train  # noqa: E402

DOSE = 100.0  # mg
TIMES = torch.tensor([6.0, 12.0])  # hours after the dose
PATIENTS, OCCASIONS = 16, 3
MU_0 = torch.tensor([1.4, 3.0])  # log CL (L/h), log V (L): CL = 4 L/h, V = 20 L
TRUE_MU, TRUE_SIGMA = torch.tensor([1.2, 3.2]), torch.tensor([0.3, 0.2])
NAMES = ["log CL", "log V"]


def simulator(theta: torch.Tensor) -> torch.Tensor:
    """One dosing occasion: (log CL, log V) (n, 2) -> log-concentrations (n, 2) at `TIMES`.

    The clearance of the occasion varies log-normally around the patient's (sd 0.25);
    the assay error is skewed (a centred Gumbel variable of scale 0.1 on the log scale).
    """
    log_cl = theta[:, 0] + 0.25 * torch.randn_like(theta[:, 0])
    log_v = theta[:, 1]
    rate = torch.exp(log_cl - log_v)  # elimination rate CL / V (1/h)
    log_c = math.log(DOSE) - log_v[:, None] - rate[:, None] * TIMES
    return log_c + dist.Gumbel(-0.1 * 0.5772, 0.1).sample(log_c.shape)


likelihood = NLE(zuko.flows.MAF)  # learned p(x | theta); a MAF is cheap per gradient


def model(x_obs=None):
    mu = pyro.sample("mu", dist.Normal(MU_0, 0.5).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(0.3 * torch.ones(2)).to_event(1))
    with pyro.plate("patients", PATIENTS):
        theta = pyro.sample("theta", dist.Normal(mu, sigma).to_event(1))
        with pyro.plate("occasions", OCCASIONS, dim=-2):
            return pyro.sample("x", SimulatorDistribution(simulator, theta, likelihood), obs=x_obs)


class _Sampled(ZukoToPyro):
    """`ZukoToPyro` with `rsample`, which Pyro's `Predictive` and initialisation call."""

    def rsample(self, sample_shape=torch.Size()):  # noqa: B008
        return self(sample_shape)


class AutoZukoIAF(AutoContinuous):
    """A zuko inverse autoregressive flow over all latent variables, as a Pyro autoguide.

    The unconstrained latent vector is `z = loc + scale * f(u)`, `u ~ N(0, I)`, where `f`
    is a stack of masked autoregressive transforms run in the sampling direction (one
    network pass samples and scores, like Pyro's `AutoIAFNormal`). `loc` starts at the
    prior median and `scale` at `init_scale`, and the last layer of every network
    starts at zero, so the flow starts as a mean-field normal and learns the rest.

    Args:
        model: the Pyro model.
        init_scale: the initial scale of every latent variable (unconstrained).
        flow_options: options of `zuko.flows.MAF` (`transforms`, `hidden_features`).
    """

    def __init__(self, model, init_scale: float = 0.1, **flow_options) -> None:
        self.init_scale, self.flow_options = init_scale, flow_options
        super().__init__(model, init_loc_fn=init_to_median)

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        maf = zuko.flows.MAF(self.latent_dim, **self.flow_options)
        for transform in maf.transform.transforms:
            last = [m for m in transform.modules() if isinstance(m, torch.nn.Linear)][-1]
            torch.nn.init.zeros_(last.weight)  # the identity map
            torch.nn.init.zeros_(last.bias)
        loc = self._init_loc()
        log_scale = torch.full_like(loc, math.log(self.init_scale))
        standardise = zuko.flows.UnconditionalTransform(  # z -> (z - loc) / scale
            lambda loc, log_scale: AffineTransform(
                -loc * torch.exp(-log_scale), torch.exp(-log_scale), event_dim=1
            ),
            loc,
            log_scale,
        )
        inverse = [zuko.flows.LazyInverse(t) for t in maf.transform.transforms]
        base = zuko.flows.UnconditionalDistribution(
            zuko.distributions.DiagNormal, torch.zeros_like(loc), torch.ones_like(loc),
            buffer=True,
        )  # fmt: skip
        self.flow = zuko.flows.Flow([standardise, *inverse], base)

    def get_posterior(self, *args, **kwargs):
        """The flow over the unconstrained latent vector, as a Pyro distribution."""
        return _Sampled(self.flow())


def fit_svi(guide, x_obs: torch.Tensor, steps: int, particles: int) -> tuple[list[float], float]:
    """Maximises the ELBO of `guide` with Adam (learning rate decayed from 0.01 to 0.001).

    Args:
        guide: a Pyro autoguide of `model`.
        x_obs: (OCCASIONS, PATIENTS, 2) observed log-concentrations.
        steps: optimisation steps.
        particles: ELBO samples per step, vectorised.

    Returns:
        The ELBO estimate at each step and the wall time in seconds.
    """
    pyro.clear_param_store()
    optimizer = ClippedAdam({"lr": 0.01, "lrd": 0.1 ** (1 / steps), "clip_norm": 10.0})
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=2)
    svi = SVI(model, guide, optimizer, loss=elbo)
    start = time.perf_counter()
    trace = [-svi.step(x_obs) for _ in range(steps)]
    return trace, time.perf_counter() - start


def draws(samples: dict[str, torch.Tensor]) -> torch.Tensor:
    """Posterior draws `{site: (n, ...)}` as rows `(n, 4 + 2 * PATIENTS)`: mu, sigma, theta."""
    n = len(samples["mu"])
    return torch.cat(
        [samples["mu"].reshape(n, 2), samples["sigma"].reshape(n, 2),
         samples["theta"].reshape(n, -1)], -1,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke-test", action="store_true", help="tiny budgets, seconds")
    parser.add_argument("--output", type=Path, default=Path("examples/output"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    smoke = args.smoke_test
    num_simulations, epochs = (500, 3) if smoke else (20_000, 1000)
    steps, particles = (30, 2) if smoke else (3000, 8)
    warmup, samples = (20, 20) if smoke else (500, 1000)
    c2st_steps = 50 if smoke else 1000

    # Ground truth and observations from the real simulator.
    pyro.set_rng_seed(0)
    theta_true = TRUE_MU + TRUE_SIGMA * torch.randn(PATIENTS, 2)
    x_obs = simulator(theta_true.repeat(OCCASIONS, 1)).reshape(OCCASIONS, PATIENTS, 2)

    start = time.perf_counter()
    reports = train(model, num_simulations=num_simulations, seed=1, progress=False,
                    fit_options={"max_epochs": epochs})  # fmt: skip
    print(reports["x"])
    seconds = {"training": time.perf_counter() - start}

    # The reference: NUTS on the same learned likelihood.
    pyro.set_rng_seed(2)
    start = time.perf_counter()
    mcmc = MCMC(NUTS(model), num_samples=samples, warmup_steps=warmup, disable_progbar=True)
    mcmc.run(x_obs)
    seconds["NUTS"] = time.perf_counter() - start
    posteriors = {"NUTS": draws(mcmc.get_samples())}

    # SVI with a mean-field and a flow guide.
    elbos = {}
    guides = {
        "AutoNormal": lambda: AutoNormal(model, init_loc_fn=init_to_median, init_scale=0.1),
        "AutoZukoIAF": lambda: AutoZukoIAF(model, transforms=2, hidden_features=(128, 128)),
    }
    for name, make in guides.items():
        pyro.set_rng_seed(3)
        guide = make()
        elbos[name], seconds[name] = fit_svi(guide, x_obs, steps, particles)
        with torch.no_grad():
            predictive = Predictive(guide, num_samples=len(posteriors["NUTS"]),
                                    return_sites=["mu", "sigma", "theta"])  # fmt: skip
            posteriors[name] = draws(predictive(x_obs))

    # Results: means and sds, C2ST against NUTS, ELBO, times.
    labels = [f"mu[{n}]" for n in NAMES] + [f"sigma[{n}]" for n in NAMES]
    labels += [f"theta[{s}, {n}]" for s in range(PATIENTS) for n in NAMES]
    truth = torch.cat([TRUE_MU, TRUE_SIGMA, theta_true.flatten()])
    print(f"\n{'mean ± sd':18s} {'true':>6s}" + "".join(f"{name:>18s}" for name in posteriors))
    for i in range(8):
        row = "".join(
            f"{p[:, i].mean():10.3f} ± {p[:, i].std():5.3f}" for p in posteriors.values()
        )
        print(f"{labels[i]:18s} {truth[i]:6.2f}{row}")
    print(
        f"\n{'':12s}{'wall time':>11s}{'ELBO':>9s}{'C2ST population':>17s}{'C2ST patient 1':>16s}"
    )
    for name in ["training", "NUTS"]:
        print(f"{name:12s}{seconds[name]:9.1f} s")
    reference = posteriors["NUTS"]
    for name in guides:
        approx = posteriors[name]
        population = c2st(reference[:, :4], approx[:, :4], steps=c2st_steps)
        patient = c2st(reference[:, 6:8], approx[:, 6:8], steps=c2st_steps)
        final = sum(elbos[name][-steps // 10 :]) / len(elbos[name][-steps // 10 :])
        print(f"{name:12s}{seconds[name]:9.1f} s{final:9.1f}{population:17.3f}{patient:16.3f}")
    print("ELBO: mean over the last 10% of steps. C2ST against NUTS (0.5: indistinguishable)")
    print("on the population parameters (mu, sigma) and on patient 1's theta.")

    args.output.mkdir(parents=True, exist_ok=True)
    figure, ax = plt.subplots(figsize=(6, 3.5))
    for i, (name, trace) in enumerate(elbos.items()):
        trace = torch.tensor(trace)
        window = max(1, len(trace) // 50)
        smooth = trace.unfold(0, window, 1).mean(-1)
        ax.plot(trace, color=f"C{i}", alpha=0.2, linewidth=0.5)
        ax.plot(torch.arange(len(smooth)) + window - 1, smooth, color=f"C{i}", label=name)
    top = max(float(torch.tensor(trace).max()) for trace in elbos.values())
    ax.set_ylim(top - 40, top + 5)
    ax.set(xlabel="SVI step", ylabel="ELBO (nats)", title="ELBO with the learned likelihood")
    ax.legend()
    figure.tight_layout()
    figure.savefig(args.output / "svi_elbo.png", dpi=100)

    figure, axes = plt.subplots(2, 4, figsize=(12, 5.5))
    colors = {"NUTS": "k", "AutoNormal": "C0", "AutoZukoIAF": "C1"}
    for ax, i in zip(axes.flat[:6], range(6), strict=False):
        for name, p in posteriors.items():
            ax.hist(p[:, i], bins=40, density=True, histtype="step", color=colors[name],
                    label=name)  # fmt: skip
        ax.axvline(truth[i], color="grey", linestyle="--")
        ax.set_xlabel(labels[i])
    for ax, (i, j) in zip(axes.flat[6:], [(2, 4), (6, 7)], strict=False):
        for name, p in posteriors.items():
            rho = torch.corrcoef(p[:, [i, j]].T)[0, 1]
            ax.scatter(p[:500, i], p[:500, j], s=2, alpha=0.3, color=colors[name],
                       label=f"{name}: r = {rho:.2f}")  # fmt: skip
        ax.set(xlabel=labels[i], ylabel=labels[j])
        ax.legend(fontsize="x-small", markerscale=4)
    handles, names = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, names, loc="lower center", ncols=3)
    figure.suptitle("posterior marginals and pairs: NUTS vs the two SVI guides (dashed: truth)")
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    figure.savefig(args.output / "svi_marginals.png", dpi=100)
    print(f"figures written to {args.output}/svi_elbo.png and svi_marginals.png")


if __name__ == "__main__":
    main()
