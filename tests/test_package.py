import subprocess
import sys

import pyro_sbi


def test_public_api_is_exported_and_shadows_no_module():
    import pkgutil
    import types

    exported = {name for name in dir(pyro_sbi) if not name.startswith("_")}
    modules = {info.name for info in pkgutil.iter_modules(pyro_sbi.__path__)}
    for name in set(pyro_sbi.__all__) - {"__version__"}:
        assert getattr(pyro_sbi, name).__module__.startswith("pyro_sbi."), name
    for name in modules & exported:  # a module of the package stays that module
        assert isinstance(getattr(pyro_sbi, name), types.ModuleType), name
    assert set(pyro_sbi.__all__) == exported - modules | {"__version__"}
    assert {"Estimator", "c2st", "sbc", "ppc"} <= set(pyro_sbi.__all__)


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


def test_modules_are_not_shadowed_by_the_functions_they_define():
    """`pyro_sbi.fit`, `.simulate`, `.train` are functions; their modules have other names."""
    import importlib
    import inspect

    import pyro_sbi

    for function, module in [
        ("fit", "fitting"),
        ("simulate", "simulation"),
        ("train", "training"),
    ]:
        imported = importlib.import_module(f"pyro_sbi.{module}")
        assert inspect.isfunction(getattr(pyro_sbi, function))
        assert getattr(pyro_sbi, function) is getattr(imported, function)
        assert getattr(pyro_sbi, module) is imported
    import pyro_sbi.simulation

    assert pyro_sbi.simulation.SimulationError is pyro_sbi.SimulationError
