"""Communication between ranks behind one small interface: one rank (no MPI at all) or MPI.

  allreduce_sum(x)   sum of an array over ranks; called inside jit (mpi4jax on its own communicator)
  gather(obj, timeout_s, label)
                     every rank's small Python object, on every rank (the per-round host exchange);
                     a rank that does not arrive within timeout_s aborts the whole job, naming it
  bcast(obj)         rank 0's object on every rank (initial parameters and optimizer state)
  barrier(), abort(code)
"""

from __future__ import annotations

import os
import sys
import time

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

    def gather(self, obj, timeout_s: float | None = None, label: str = ""):
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
        self.library = " ".join(MPI.Get_library_version().split()[:3]).rstrip(",")

    def allreduce_sum(self, x):
        return self._mpi4jax.allreduce(x, op=self._MPI.SUM, comm=self.jax_comm)

    def gather(self, obj, timeout_s: float | None = None, label: str = ""):
        """allgather, entered only once every rank has arrived, or the job is aborted after timeout_s.

        Arrival is a non-blocking barrier polled with short sleeps (which also spares a shared core the
        busy-waiting of a blocking collective); rank 0 also receives a note from each rank as it
        arrives, so when someone is missing it can say who.
        """
        if timeout_s is None or self.size == 1:
            return self.world.allgather(obj)
        tag = 7301
        if self.rank == 0:
            notes = {r: self.world.irecv(source=r, tag=tag) for r in range(1, self.size)}
        else:
            note = self.world.isend(self.rank, dest=0, tag=tag)
        arrived = self.world.Ibarrier()
        start = time.monotonic()
        pause = 1e-5
        while not arrived.Test():
            if time.monotonic() - start > timeout_s:
                if self.rank == 0:
                    missing = [r for r, req in notes.items() if not req.Test()]
                    who = f"rank(s) {missing} did not arrive" if missing else "a rank did not arrive"
                else:
                    who = "a peer (rank 0 names it, unless it is rank 0) did not arrive"
                print(f"jaxpong: rank {self.rank}: {who} within {timeout_s:.0f} s at {label}; a rank died or hung. "
                      "Aborting the MPI job.", file=sys.stderr, flush=True)
                self.abort(1)
            time.sleep(pause)
            pause = min(pause * 2, 2e-3)
        if self.rank == 0:
            for req in notes.values():
                req.wait()
        else:
            note.wait()
        return self.world.allgather(obj)

    def bcast(self, obj):
        return self.world.bcast(obj, root=0)

    def barrier(self):
        self.world.Barrier()

    def abort(self, code: int = 1):
        self.world.Abort(code)


def make_comm():
    return MpiComm() if launched_size() > 1 else LocalComm()
