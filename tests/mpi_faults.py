"""``fedf train`` with injected faults, for the MPI tests (not a test module).

    mpiexec -n K python -m mpi4py tests/mpi_faults.py FAULTS [fedf train flags]

FAULTS is ``ACTION:TARGET:EPOCH[,...]`` (``fedf_jax.backends.mpi.faults.parse``).
"""

import sys

from fedf_jax import cli
from fedf_jax.backends.mpi import faults

if __name__ == "__main__":
    args = cli.build_parser().parse_args(["train", *sys.argv[2:]])
    sys.exit(cli.train(args, faults=faults.parse(sys.argv[1])))
