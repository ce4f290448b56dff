"""The benchmark command runs end to end on tiny budgets."""

import functools
import json

import pytest
import torch

from pyro_sbi.benchmark import compare, plot

pytestmark = pytest.mark.usefixtures("isolated_cache")


@pytest.fixture
def recorded(monkeypatch):
    """The observation and samples of each posterior draw, the pair of each C2ST score."""
    import pyro_sbi

    real_c2st, real_samples = pyro_sbi.c2st, compare._posterior_samples
    drawn, scored = [], []

    def posterior_samples(task, estimator, x, *args):
        samples = real_samples(task, estimator, x, *args)
        drawn.append((x, samples))
        return samples

    def c2st(samples, reference, **options):
        scored.append((samples, reference, options))
        return real_c2st(samples, reference, **options)

    monkeypatch.setattr(compare, "_posterior_samples", posterior_samples)
    monkeypatch.setattr(pyro_sbi, "c2st", c2st)
    return drawn, scored, real_c2st


def check_scores(rows, task, recorded, num):
    """Each row's C2ST compares the samples drawn for its observation with its reference."""
    drawn, scored, real_c2st = recorded
    assert len(drawn) == len(scored) == len(rows)
    for row, (x, samples), (scored_samples, reference, options) in zip(
        rows, drawn, scored, strict=True
    ):
        assert torch.equal(x, task.observation(row.observation))
        assert scored_samples is samples and samples.shape == (num, 2)
        assert torch.equal(reference, task.reference_posterior(row.observation, num))
        assert row.c2st == real_c2st(samples, reference, **options)


# 300 simulations and a few epochs leave the posteriors close to the prior (C2ST against
# the reference 0.99, against prior draws 0.51): too little for a statistical check of
# the samples. These tests check the plumbing: which samples are scored against which
# reference, and what the rows say.


def test_benchmark_runs_end_to_end_and_writes_rows(tmp_path, recorded):
    """Catches a row scored on the samples of another observation, against another
    observation's reference, or labelled with the wrong task, method, budget or observation."""
    from pyro_sbi.tasks import two_moons

    rows = compare.run(
        ["two_moons"], ["nle", "nre"], [300], [1, 2], seed=0, log=lambda *a, **k: None,
        num_posterior=500, fit_options={"max_epochs": 5},
    )  # fmt: skip
    assert [(r.task, r.method, r.budget, r.observation) for r in rows] == [
        ("two_moons", m, 300, i) for m in ("nle", "nre") for i in (1, 2)
    ]
    check_scores(rows, two_moons, recorded, 500)
    for row in rows:
        assert row.train_s > 0 and row.sample_s > 0
        assert row.sbi_c2st is None and row.time_ratio is None
    text = compare.table(rows)
    assert text.count("| two_moons |") == 4 + 2  # the rows and the means per method
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"rows": [r.__dict__ for r in rows]}))
    plot.main([str(path), "--output", str(tmp_path / "c2st.png")])
    assert (tmp_path / "c2st.png").stat().st_size > 1000


@pytest.mark.parametrize("method", ["npe", "fmpe"])
def test_benchmark_posterior_rows_score_the_guides_draws_inside_the_prior(
    recorded, monkeypatch, method
):
    """Catches NPE or FMPE draws scored for another observation, leaking out of the prior's
    box (two_moons: theta in [-1, 1]^2), which a guide on the unconstrained space cannot
    do, or a row of one method fitted with the other's estimator."""
    from pyro_sbi.tasks import two_moons

    guides = []
    real_init = compare._Guide.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        guides.append(self)

    monkeypatch.setattr(compare._Guide, "__init__", init)
    rows = compare.run(
        ["two_moons"], [method], [300], [1, 2], seed=0, log=lambda *a, **k: None,
        num_posterior=500, fit_options={"max_epochs": 5},
    )  # fmt: skip
    assert [(r.task, r.method, r.observation) for r in rows] == [
        ("two_moons", method, i) for i in (1, 2)
    ]
    assert [type(g.guide.estimator).__name__ for g in guides] == [method.upper()]
    check_scores(rows, two_moons, recorded, 500)
    for _, samples in recorded[0]:
        assert samples.abs().max() < 1.0


def test_benchmark_command_line_refuses_unknown_tasks():
    with pytest.raises(SystemExit):
        compare.main(["--tasks", "no_such_task"])


def test_benchmark_sequential_rounds_rows(recorded):
    """Catches a sequential row scored against another observation or mislabelled."""
    from pyro_sbi.tasks import two_moons

    rows = compare.run(
        ["two_moons"], ["nle"], [300], [1], seed=0, log=lambda *a, **k: None,
        num_posterior=300, fit_options={"max_epochs": 3}, rounds=(1, 2),
    )  # fmt: skip
    assert [(r.task, r.budget, r.rounds, r.observation) for r in rows] == [
        ("two_moons", 300, 1, 1), ("two_moons", 300, 2, 1)
    ]  # fmt: skip
    check_scores(rows, two_moons, recorded, 300)
    assert all(r.train_s > 0 for r in rows)
    text = compare.table(rows)
    assert "| two_moons | nle, 2 rounds | 300 | 1 |" in text
    assert "| two_moons | nle, 2 rounds | 300 |" in text.split("Mean over observations:")[1]


def test_benchmark_command_line_refuses_zero_rounds():
    with pytest.raises(SystemExit):
        compare.main(["--rounds", "0"])


def test_benchmark_drift_diffusion_takes_mnle_and_skips_nle(monkeypatch, recorded):
    """Catches MNLE skipped or NLE run on mixed data, or a ddm row scored on other samples."""
    from pyro_sbi.tasks import ddm

    # The exact reference takes a minute (tested in test_tasks) and 100 trials make each
    # likelihood evaluation costly: the plumbing is tested on 10 trials and prior draws.
    observation = ddm.observation
    monkeypatch.setattr(ddm, "observation", lambda i: observation(i)[:10])
    monkeypatch.setattr(ddm, "SIR_CANDIDATES", 10_000)
    monkeypatch.setattr(ddm, "reference_posterior", lambda i, n: ddm.prior().sample((n,)))
    rows = compare.run(
        ["ddm"], ["nle", "mnle"], [500], [1], seed=0, log=lambda *a, **k: None,
        num_posterior=250, fit_options={"max_epochs": 2},
    )  # fmt: skip
    assert [(r.task, r.method, r.budget, r.observation) for r in rows] == [("ddm", "mnle", 500, 1)]
    (x, samples), (scored_samples, reference, options) = recorded[0] + recorded[1]
    assert torch.equal(x, ddm.observation(1)) and x.shape == (10, 2)
    assert scored_samples is samples and samples.shape == reference.shape == (250, 4)
    assert rows[0].c2st == recorded[2](samples, reference, **options)


def test_benchmark_command_line_prints_each_row_once(monkeypatch, capsys):
    run = compare.run
    monkeypatch.setattr(
        compare,
        "run",
        lambda *a, **k: run(*a, **k, num_posterior=300, fit_options={"max_epochs": 3}),
    )
    rows = compare.main(["--tasks", "two_moons", "--num-simulations", "300"])
    out = capsys.readouterr().out
    assert len(rows) == 1
    assert out.count("| task | method | simulations | obs |") == 1
    assert out.count("| two_moons | nle | 300 | 1 |") == 1
    assert out.count("Mean over observations:") == 1
    assert out.index("| two_moons | nle | 300 | 1 |") < out.index("Mean over observations:")
    assert "| two_moons | nle | 300 |" in out.split("Mean over observations:")[1]


def test_sbi_comparison_leaves_no_logs_in_the_working_directory(tmp_path, monkeypatch):
    pytest.importorskip("sbi")
    monkeypatch.chdir(tmp_path)
    rows = compare.run(
        ["gaussian_linear"], ["nle"], [300], [1], compare="sbi", seed=0,
        log=lambda *a, **k: None, num_posterior=200, fit_options={"max_epochs": 2},
    )  # fmt: skip
    assert rows[0].sbi_c2st is not None
    assert not (tmp_path / "sbi-logs").exists()


def test_benchmark_suite_broad_runs_every_broad_task(monkeypatch):
    from pyro_sbi import tasks

    calls = []
    monkeypatch.setattr(compare, "run", lambda tasks_, *a, **k: calls.append(tasks_) or [])
    compare.main(["--suite", "broad", "--num-simulations", "300"])
    compare.main(["--suite", "broad", "--tasks", "two_moons"])
    compare.main([])
    assert calls == [list(tasks.BROAD), ["two_moons", *tasks.BROAD], ["two_moons"]]
    assert len(set(compare.ALL_TASKS)) == len(compare.ALL_TASKS)
    assert compare.ALL_TASKS[: len(compare.TASKS)] == compare.TASKS  # seeds unchanged


def test_benchmark_runs_a_broad_task(recorded):
    """Catches a broad task's row scored against another observation's reference."""
    from pyro_sbi.tasks import sign_symmetric

    rows = compare.run(
        ["sign_symmetric"], ["nle"], [300], [2], seed=0, log=lambda *a, **k: None,
        num_posterior=250, fit_options={"max_epochs": 2},
    )  # fmt: skip
    assert [(r.task, r.method, r.budget, r.observation) for r in rows] == [
        ("sign_symmetric", "nle", 300, 2)
    ]
    check_scores(rows, sign_symmetric, recorded, 250)


def test_linear_trials_posterior_is_the_closed_form():
    from pyro_sbi.benchmark import trials

    A, noise = trials.LINEAR_MAP, trials.LINEAR_NOISE
    torch.manual_seed(0)
    theta = torch.randn(20_000, 3)
    x = trials.linear_simulator(theta)
    residual = x - theta @ A.T
    assert residual.std(0).tolist() == pytest.approx([noise] * 3, rel=0.03)
    # Conjugacy: the closed form equals prior x likelihood up to a constant in theta.
    data = trials.linear_simulator(trials.LINEAR_TRUTH.expand(7, 3))
    posterior = trials.linear_posterior(data)
    points = torch.randn(5, 3)
    log_joint = torch.distributions.Normal(0.0, 1.0).log_prob(points).sum(-1) + (
        torch.distributions.Normal(points @ A.T, noise).log_prob(data[:, None]).sum((0, -1))
    )
    difference = log_joint - posterior.log_prob(points)
    assert torch.allclose(difference, difference[0], atol=1e-4)


def test_trials_accuracy_rows(monkeypatch):
    from pyro_sbi.benchmark import trials

    monkeypatch.setattr(trials, "NUM_POSTERIOR", 500)
    printed = []
    rows = trials.accuracy(("linear",), trials=(1, 5), budgets=(300,), log=lambda *a, **k:
                           printed.append(a[0]))  # fmt: skip
    assert [(r["method"], r["trials"]) for r in rows] == [
        ("nle", 1), ("nle", 5), ("nre", 1), ("nre", 5)
    ]  # fmt: skip
    assert all(isinstance(r["c2st"], float) for r in rows) and len(printed) == 4
    assert printed[0].startswith("| linear | nle | 300 | 1 |")


@pytest.mark.slow
def test_trials_accuracy_rows_beside_sbi(monkeypatch):
    """sbi's rows on the same simulations (about 4 minutes: sbi's MCMC, ours, training)."""
    pytest.importorskip("sbi")
    from pyro_sbi.benchmark import trials

    monkeypatch.setattr(trials, "NUM_POSTERIOR", 500)
    rows = trials.accuracy(("linear",), trials=(1, 5), budgets=(300,), compare="sbi",
                           log=lambda *a, **k: None)  # fmt: skip
    sbi_rows = [row for row in rows if row["method"] == "sbi-nle"]
    assert [row["trials"] for row in sbi_rows] == [1, 5]
    assert all(0.5 <= row["c2st"] <= 1.0 and row["train_s"] > 0 for row in sbi_rows)


def test_trials_end_to_end_rows():
    """The plumbing of the end-to-end run (short chains, a briefly trained MNLE)."""
    from pyro_sbi.benchmark import trials

    lines = []
    options = dict(num_simulations=400, chains=2, warmup=4, samples=6, max_tree_depth=3)
    rows = trials.end_to_end(2, 8, **options, log=lambda line, **_: lines.append(line))
    assert [row["likelihood"] for row in rows] == ["MNLE", "exact"]
    assert 0.0 <= rows[0]["c2st"] <= 1.0 and "c2st" not in rows[1]
    for row in rows:
        assert row["seconds"] > 0 and row["min_ess"] > 0 and row["divergent"] >= 0
        assert row["ess_per_s"] == row["min_ess"] / row["seconds"]
    assert lines[0].startswith("trained MNLE(discrete=[1]) on 400 simulations")
    assert lines[1].startswith("| 2 × 8 | MNLE |") and lines[2].startswith("| 2 × 8 | exact |")


@pytest.mark.slow
def test_load_benchmark_kills_and_resumes_without_losing_rows(tmp_path):
    from pyro_sbi.benchmark import load

    n = 50_000
    result = load.kill_and_resume(n, str(tmp_path))
    # the run was killed part-way and the resumed run simulated only what was missing
    assert 0.5 <= result["killed at"] < 1.0
    assert result["resumed rows"] == round(n * (1 - result["killed at"]))
    assert result["failed"] == 0 and result["peak MB"] > 0
    status = load._committed(str(tmp_path / "killed.zarr"))
    assert len(status) == n and (status == 0).all()


def test_benchmark_exact_rows_sample_the_exact_likelihood(recorded):
    """Catches `exact` rows that train, simulate, sample another likelihood than the
    task's own or score against another observation's reference. Two moons' exact
    posterior sampled by SliceMCMC scores C2ST below 0.6 on 1,000 draws; draws of one
    crescent only score about 0.75, draws near the prior about 0.99."""
    from pyro_sbi.tasks import two_moons

    rows = compare.run(
        ["two_moons"], ["exact"], [300], [1, 2], seed=0, log=lambda *a, **k: None,
        num_posterior=1000,
    )  # fmt: skip
    assert [(r.task, r.method, r.budget, r.observation) for r in rows] == [
        ("two_moons", "exact", 300, i) for i in (1, 2)
    ]
    check_scores(rows, two_moons, recorded, 1000)
    for row in rows:
        assert row.train_s == 0 and row.simulate_s == 0 and row.sample_s > 0
        assert row.c2st < 0.6
    assert compare._applies(two_moons, "exact")


def test_amortised_many_observations_rows():
    from pyro_sbi.benchmark import amortised

    rows = amortised.many_observations(
        ["two_moons"], ["npe"], [300], num_observations=8, num_draws=20,
        log=lambda *a, **k: None, fit_options={"max_epochs": 2},
    )  # fmt: skip
    (row,) = rows
    assert (row.task, row.method, row.budget, row.observations, row.draws) == (
        "two_moons", "npe", 300, 8, 20,
    )  # fmt: skip
    assert row.sample_s > 0 and 0 <= row.tarp_max_deviation <= 1 and 0 <= row.tarp_p_value <= 1


def test_amortised_importance_rows_score_three_posteriors(recorded):
    from pyro_sbi.benchmark import amortised

    rows = amortised.importance(
        ["two_moons"], [300], [1], num_candidates=500, num_posterior=200,
        log=lambda *a, **k: None, fit_options={"max_epochs": 2},
    )  # fmt: skip
    assert [r.method for r in rows] == ["npe", "nle", "npe+is"]
    assert rows[0].ess is None and rows[1].ess is None and 1 <= rows[2].ess <= 500
    assert all(0.0 <= r.c2st <= 1.0 for r in rows)
    _, scored, _ = recorded
    assert [len(samples) for samples, _, _ in scored] == [200, 200, 200]
    assert "npe+is" in amortised.importance_summary(rows)


def test_amortised_command_line_needs_a_measurement():
    from pyro_sbi.benchmark import amortised

    with pytest.raises(SystemExit):
        amortised.main(["--tasks", "two_moons"])


def test_trials_accuracy_rows_with_sequential_rounds(monkeypatch):
    """`rounds=(1, 2)`: the prior-trained rows, then a two-round training per `n`."""
    from pyro_sbi import SliceMCMC, c2st, train
    from pyro_sbi.benchmark import trials

    def short_chains(model, x, seed):
        mcmc = SliceMCMC(model, num_samples=4, num_chains=125, warmup_steps=10, seed=seed,
                         progress=False)  # fmt: skip
        return mcmc.run(x).get_samples()["theta"]

    monkeypatch.setattr(trials, "NUM_POSTERIOR", 500)
    monkeypatch.setattr(trials, "_sample", short_chains)
    short = {"fit_options": {"max_epochs": 3}, "sampler_options": {"warmup_steps": 10}}
    monkeypatch.setattr(trials, "train", functools.partial(train, **short))
    monkeypatch.setattr(trials, "c2st", functools.partial(c2st, steps=100))
    rows = trials.accuracy(("linear",), trials=(1, 5), budgets=(300,), rounds=(1, 2),
                           log=lambda *a, **k: None)  # fmt: skip
    assert [(r["method"], r["trials"]) for r in rows] == [
        ("nle", 1), ("nle", 5), ("nle, 2 rounds", 1), ("nle, 2 rounds", 5),
        ("nre", 1), ("nre", 5), ("nre, 2 rounds", 1), ("nre, 2 rounds", 5),
    ]  # fmt: skip
    assert all(0.0 <= r["c2st"] <= 1.0 and r["train_s"] > 0 for r in rows)
    sequential = [r["train_s"] for r in rows if "rounds" in r["method"]]
    assert sequential[0] != sequential[1]  # one training per number of trials
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        trials.accuracy(("linear",), trials=(1,), budgets=(300,), rounds=(0,))
