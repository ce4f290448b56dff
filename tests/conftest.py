import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seeded_and_validated():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(True):
        yield


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    """Reference posteriors are cached in a fresh directory, not the user's cache."""
    monkeypatch.setenv("PYRO_SBI_CACHE", str(tmp_path / "cache"))
