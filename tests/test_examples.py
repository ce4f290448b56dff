"""Every example runs end to end with --smoke-test; the docs show the quickstart as it is."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_smoke(path, tmp_path):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", MPLBACKEND="Agg")
    result = subprocess.run(
        [sys.executable, str(path), "--smoke-test", "--output", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(tmp_path.glob("*.png")), "the example wrote no figure"


def test_getting_started_shows_the_quickstart_as_it_is():
    root = Path(__file__).parents[1]
    page = (root / "docs" / "getting_started.md").read_text()
    script = (root / "examples" / "quickstart.py").read_text()
    for block in re.findall(r"```python\n(.*?)```", page, flags=re.S):
        for line in block.strip().splitlines():  # code written on the page is the script's
            assert line.strip() in script, line
    includes = re.findall(
        r"```\{literalinclude\} \.\./examples/quickstart\.py\n(.*?)```", page, re.S
    )
    assert len(includes) >= 4
    for options in includes:
        for key, value in re.findall(r"^:([\w-]+): (.*)$", options, flags=re.M):
            if key in ("start-at", "end-at", "start-after", "end-before"):
                assert value in script, (key, value)
            elif key == "pyobject":
                assert f"\ndef {value}(" in script, value
    figures = set(re.findall(r'"(quickstart_\w+\.png)"', script))
    assert figures and all(f"`{name}`" in page for name in figures)
    assert "front page" not in page  # the front page shows the Hodgkin-Huxley tutorial
