"""The benchmark command runs end to end on tiny budgets."""

import json

import pytest

from pyro_sbi.benchmark import compare, plot


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_SBI_CACHE", str(tmp_path / "cache"))


def test_benchmark_runs_end_to_end_and_writes_rows(tmp_path):
    rows = compare.run(
        ["two_moons"], ["nle", "nre"], [300], [1, 2], seed=0, log=lambda *a, **k: None,
        num_posterior=500, fit_options={"max_epochs": 5},
    )  # fmt: skip
    assert [(r.method, r.observation) for r in rows] == [
        ("nle", 1), ("nle", 2), ("nre", 1), ("nre", 2)
    ]  # fmt: skip
    for row in rows:
        assert 0.45 <= row.c2st <= 1.0 and row.train_s > 0 and row.sample_s > 0
        assert row.sbi_c2st is None and row.time_ratio is None
    text = compare.table(rows)
    assert text.count("| two_moons |") == 4 + 2  # the rows and the means per method
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({"rows": [r.__dict__ for r in rows]}))
    plot.main([str(path), "--output", str(tmp_path / "c2st.png")])
    assert (tmp_path / "c2st.png").stat().st_size > 1000


def test_benchmark_command_line_refuses_unknown_tasks():
    with pytest.raises(SystemExit):
        compare.main(["--tasks", "no_such_task"])


def test_benchmark_sequential_rounds_rows():
    rows = compare.run(
        ["two_moons"], ["nle"], [300], [1], seed=0, log=lambda *a, **k: None,
        num_posterior=300, fit_options={"max_epochs": 3}, rounds=(1, 2),
    )  # fmt: skip
    assert [(r.rounds, r.observation) for r in rows] == [(1, 1), (2, 1)]
    assert all(0.45 <= r.c2st <= 1.0 and r.train_s > 0 for r in rows)
    text = compare.table(rows)
    assert "| two_moons | nle, 2 rounds | 300 | 1 |" in text
    assert "| two_moons | nle, 2 rounds | 300 |" in text.split("Mean over observations:")[1]


def test_benchmark_command_line_refuses_zero_rounds():
    with pytest.raises(SystemExit):
        compare.main(["--rounds", "0"])


def test_benchmark_drift_diffusion_takes_mnle_and_skips_nle(monkeypatch):
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
    assert [r.method for r in rows] == ["mnle"]
    assert 0.45 <= rows[0].c2st <= 1.0


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
