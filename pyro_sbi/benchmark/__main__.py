"""`python -m pyro_sbi.benchmark`: see :mod:`pyro_sbi.benchmark.compare`."""

from pyro_sbi.benchmark.compare import main

main()
