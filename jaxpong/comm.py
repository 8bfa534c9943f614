"""Communication between ranks behind one small interface: one rank (no MPI at all) or MPI.

  allreduce_sum(x)   sum of an array over ranks; called inside jit (mpi4jax on its own communicator)
  gather(obj)        every rank's small Python object, on every rank (the per-round host exchange)
  bcast(obj)         rank 0's object on every rank (initial parameters and optimizer state)
  barrier(), abort(code)
"""

from __future__ import annotations

import os

LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS")


def launched_size() -> int:
    """How many ranks a launcher (mpirun, mpiexec, srun) started, without touching MPI (1 if none)."""
    if os.environ.get("SLURM_NTASKS") and not os.environ.get("SLURM_STEP_ID"):
        return 1  # inside an allocation but not under srun: a plain process
    for var in LAUNCHER_SIZE_VARS:
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 1


class LocalComm:
    """One rank: every collective is the identity, and MPI is never imported."""

    rank = 0
    size = 1
    library = "none (one rank)"

    def allreduce_sum(self, x):
        return x

    def gather(self, obj):
        return [obj]

    def bcast(self, obj):
        return obj

    def barrier(self):
        pass

    def abort(self, code: int = 1):
        os._exit(code)


class MpiComm:
    """Many ranks over MPI. mpi4jax gets a communicator of its own (a clone), as mpi4jax requires."""

    def __init__(self):
        from mpi4py import MPI
        import mpi4jax

        self._MPI, self._mpi4jax = MPI, mpi4jax
        self.world = MPI.COMM_WORLD
        self.jax_comm = self.world.Clone()
        self.rank, self.size = self.world.Get_rank(), self.world.Get_size()
        self.library = " ".join(MPI.Get_library_version().split()[:3])

    def allreduce_sum(self, x):
        return self._mpi4jax.allreduce(x, op=self._MPI.SUM, comm=self.jax_comm)

    def gather(self, obj):
        return self.world.allgather(obj)

    def bcast(self, obj):
        return self.world.bcast(obj, root=0)

    def barrier(self):
        self.world.Barrier()

    def abort(self, code: int = 1):
        self.world.Abort(code)


def make_comm():
    return MpiComm() if launched_size() > 1 else LocalComm()
