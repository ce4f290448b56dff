import subprocess
import sys

import pyro_sbi


def test_public_api_is_exported():
    for name in pyro_sbi.__all__:
        assert hasattr(pyro_sbi, name), name
    assert pyro_sbi.__version__


def _validation_after_import(before: str, statements: str) -> str:
    code = (
        "import torch\n"
        "from torch.distributions import Distribution\n"
        f"Distribution.set_default_validate_args({before})\n"
        f"{statements}\n"
        "kind = type(Distribution.__dict__['arg_constraints']).__name__\n"
        "print(Distribution._validate_args, kind)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_import_leaves_torch_validation_default_unchanged():
    assert _validation_after_import("True", "import pyro_sbi") == "True property"
    assert _validation_after_import("False", "import pyro_sbi") == "False property"


def test_zuko_alone_would_change_it():
    # The guard is needed: importing zuko on its own flips the global default.
    assert _validation_after_import("True", "import zuko") == "False dict"
