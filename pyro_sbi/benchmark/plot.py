"""C2ST against simulation budget, per task: ``python -m pyro_sbi.benchmark.plot rows.json``.

Reads the ``--json`` file of ``python -m pyro_sbi.benchmark`` and draws one panel per
task: the mean C2ST over observations (points: single observations) against the number
of simulations, one line per method, and sbi's in dashes where it was compared.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def plot(rows: list[dict], path: str | Path) -> None:
    """Draws C2ST vs. budget per task from benchmark rows (dicts of `Row` fields)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(row["task"] for row in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        series = defaultdict(lambda: defaultdict(list))
        for row in rows:
            if row["task"] != task:
                continue
            series[("pyro_sbi", row["method"])][row["budget"]].append(row["c2st"])
            if row.get("sbi_c2st") is not None:
                series[("sbi", row["method"])][row["budget"]].append(row["sbi_c2st"])
        for (library, method), points in sorted(series.items()):
            budgets = sorted(points)
            means = [sum(points[b]) / len(points[b]) for b in budgets]
            color = f"C{sorted({m for _, m in series}).index(method)}"
            style = "-o" if library == "pyro_sbi" else "--s"
            ax.plot(budgets, means, style, color=color, label=f"{library} {method.upper()}")
            for b in budgets:
                ax.plot([b] * len(points[b]), points[b], ".", color=color, alpha=0.4)
        ax.set(xscale="log", xlabel="simulations", ylabel="C2ST", title=task, ylim=(0.45, 1.02))
        ax.axhline(0.5, color="k", linestyle=":", linewidth=0.8)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> None:
    """The command line: `rows.json [--output c2st.png]`."""
    parser = argparse.ArgumentParser(prog="python -m pyro_sbi.benchmark.plot")
    parser.add_argument("rows", type=Path, help="the --json file of python -m pyro_sbi.benchmark")
    parser.add_argument("--output", type=Path, default=Path("c2st.png"))
    args = parser.parse_args(argv)
    plot(json.loads(args.rows.read_text())["rows"], args.output)
    print(f"plot written to {args.output}")


if __name__ == "__main__":
    main()
