"""Communication between ranks behind one small interface: one rank (no MPI at all) or MPI.

allreduce_sum(x)   sum of an array over ranks; called inside jit (mpi4jax on its own communicator)
exchange(agreed, layout, row, timeout_s, label)
                   the per-round host exchange (jaxpong/ranks/exchange.py): the fixed-size `agreed` record
                   reduced over ranks (sums and maxima, one Allreduce), and every rank's fixed-width
                   `row` gathered to rank 0 only. A rank that does not arrive within timeout_s aborts
                   the whole job, naming it.
gather_to_root(obj)  every rank's small Python object, on rank 0 only (None elsewhere); start-up only
bcast(obj)         rank 0's object on every rank (initial parameters and optimizer state)
host_first(thunk, timeout_s, label)
                   thunk() on this host's first rank, then on the host's other ranks: one rank compiles
                   into the shared persistent cache, the others then load what it wrote
barrier(), abort(code)
"""

from __future__ import annotations

import functools
import os
import sys
import time

from jaxpong.ranks.placement import launched_size

ABORT_PAUSE_S = 1.0  # before MPI_Abort: time for the launcher to forward the last line printed
PROBE_BYTES = 1 << 20  # a link probe's message: large enough that bandwidth, not latency, sets its time
PROBE_REPEATS = 3


def host_leaders(hosts: list[str]) -> dict[str, int]:
    """Each host's first rank, by rank order (the host of rank 0 first)."""
    leaders: dict[str, int] = {}
    for rank, host in enumerate(hosts):
        leaders.setdefault(host, rank)
    return leaders


class LocalComm:
    """One rank: every collective is the identity, and MPI is never imported."""

    rank = 0
    size = 1
    library = "none (one rank)"
    same_program = True

    def allreduce_sum(self, x):
        return x

    def exchange(self, agreed, layout, row, timeout_s: float | None = None, label: str = ""):
        return agreed.copy(), row[None].copy()

    def gather_to_root(self, obj):
        return [obj]

    def bcast(self, obj):
        return obj

    def host_first(self, thunk, timeout_s: float = 300.0, label: str = "", key: str | None = None):
        return thunk()

    def link_probe(self, hosts, nbytes: int = PROBE_BYTES, repeats: int = PROBE_REPEATS, timeout_s: float = 30.0):
        return None

    def barrier(self):
        pass

    def abort(self, code: int = 1):
        os._exit(code)


class MpiComm:
    """Many ranks over MPI. mpi4jax gets a communicator of its own (a clone), as mpi4jax requires."""

    def __init__(self) -> None:
        import mpi4jax
        from mpi4py import MPI

        self._MPI, self._mpi4jax = MPI, mpi4jax
        self.world = MPI.COMM_WORLD
        self.jax_comm, self.same_program = self._clone_with_one_handle()
        self.rank, self.size = self.world.Get_rank(), self.world.Get_size()
        self.library = " ".join(MPI.Get_library_version().split()[:3]).rstrip(",")
        self._reductions: dict = {}
        self._host: MPI.Comm | None = None  # this host's ranks (MPI_COMM_TYPE_SHARED), made at the first host_first

    def _clone_with_one_handle(self, attempts: int = 8):
        """(mpi4jax's communicator, whether its handle is the same number on every rank).

        mpi4jax writes the communicator's handle into the compiled program, so ranks whose handles differ
        compile different programs, and none can load another's from the persistent cache. MPICH's
        handles are slots of a per-process pool, and rank 0 holds one more slot than the others from
        start-up (a communicator of node leaders), so a plain clone differs. Cloning again, with the
        ranks that are behind taking up slots with local communicators first, lines them up within a
        few tries. Open MPI's handles are addresses: no luck there, and nothing lost but the tries."""
        MPI = self._MPI
        self._pads = []  # held for the life of the process: their slots must stay taken

        def handle(comm):
            return comm.handle & 0xFFFFFFFF

        for _ in range(attempts):
            # Take slots with local communicators until every rank's last one is the same number.
            self._pads.append(MPI.COMM_SELF.Dup())
            target = self.world.allreduce(handle(self._pads[-1]), op=MPI.MAX)
            while handle(self._pads[-1]) < target:
                self._pads.append(MPI.COMM_SELF.Dup())
            comm = self.world.Clone()
            if self.world.allreduce(handle(comm), op=MPI.MIN) == self.world.allreduce(handle(comm), op=MPI.MAX):
                return comm, True
            self._pads.append(comm)  # (the first allreduce can itself take a slot on some ranks: once more)
        return self.world.Clone(), False

    def allreduce_sum(self, x):
        return self._mpi4jax.allreduce(x, op=self._MPI.SUM, comm=self.jax_comm)

    def _arrive(self, timeout_s: float, label: str) -> None:
        """Return once every rank has arrived here, or abort the job after timeout_s, naming who is missing.

        Arrival is a non-blocking barrier polled with short sleeps (which also spares a shared core the
        busy-waiting of a blocking collective); rank 0 also receives a note from each rank as it
        arrives, so when someone is missing it can say who. Only rank 0 holds one request per rank.
        """
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
                print(
                    f"jaxpong: rank {self.rank}: {who} within {timeout_s:.0f} s at {label}; a rank died or hung. "
                    "Aborting the MPI job.",
                    file=sys.stderr,
                    flush=True,
                )
                self.abort(1)
            time.sleep(pause)
            pause = min(pause * 2, 2e-3)
        if self.rank == 0:
            for req in notes.values():
                req.wait()
        else:
            note.wait()

    def _wait(self, request, comm, timeout_s: float, label: str, who: str = "a rank on this host") -> None:
        """Poll a non-blocking request with short sleeps (a blocking one would spin on a core that a
        compiling peer needs); after timeout_s abort the job, saying `who` did not arrive."""
        start, pause = time.monotonic(), 1e-4
        while not request.Test():
            if time.monotonic() - start > timeout_s:
                print(
                    f"jaxpong: rank {self.rank}: {who} did not arrive within {timeout_s:.0f} s at "
                    f"{label}; a rank died or hung. Aborting the MPI job.",
                    file=sys.stderr,
                    flush=True,
                )
                self.abort(1)
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def host_first(self, thunk, timeout_s: float = 300.0, label: str = "a first compile", key: str | None = None):
        """thunk() on this host's first rank, then on the others.

        For compiles: N ranks of one host compiling the same program at once share its cores N ways, and
        each one then writes the same persistent-cache entry. Here one compiles with the cores to itself
        while the others sleep, and they then load its entry (a fraction of a second) in parallel.
        `key` names the program: once this host's first rank has compiled it into the cache (a marker
        file beside the cache says so), later runs load it on every rank at once, without waiting."""
        from jaxpong.ranks.jaxsetup import compile_cache_dir

        cache = compile_cache_dir()
        if cache is None or os.environ.get("JAXPONG_SHARED_COMPILE") == "0":  # (bench --startup compares)
            return thunk()
        if self._host is None:
            self._host = self.world.Split_type(self._MPI.COMM_TYPE_SHARED)
        if self._host.Get_size() == 1:
            return thunk()
        first = self._host.Get_rank() == 0
        marker = cache / "jaxpong-compiled" / key if key else None
        # The host's first rank decides for all of them: a collective must be entered by all or none.
        cached = self._host.bcast(bool(marker and marker.exists()) if first else None, root=0)
        if cached:
            return thunk()
        out = thunk() if first else None
        if first and marker is not None:
            try:
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
            except OSError:
                pass  # only a later start's shortcut is lost
        self._wait(self._host.Ibarrier(), self._host, timeout_s, label)
        return out if first else thunk()

    def _reduction(self, layout):
        """An MPI datatype of one whole record and the op that combines two records field by field.
        Whole-record elements keep MPI from splitting a record across the pieces of a segmented
        reduction, which would put sums and maxima in the wrong places."""
        key = (layout.width, layout.sum_width)
        if key not in self._reductions:
            import numpy as np

            MPI = self._MPI
            record_type = MPI.DOUBLE.Create_contiguous(layout.width).Commit()

            def combine(inbuf, inoutbuf, datatype):
                into = np.frombuffer(inoutbuf, np.float64).reshape(-1, layout.width)
                layout.combine(into, np.frombuffer(inbuf, np.float64).reshape(-1, layout.width))

            self._reductions[key] = (record_type, MPI.Op.Create(combine, commute=True))
        return self._reductions[key]

    def exchange(self, agreed, layout, row, timeout_s: float | None = None, label: str = ""):
        """(agreed reduced over all ranks, [ranks, width] rows on rank 0 / None elsewhere)."""
        import numpy as np

        if timeout_s is not None:
            self._arrive(timeout_s, label)
        record_type, op = self._reduction(layout)
        out = np.empty_like(agreed)
        self.world.Allreduce([agreed, 1, record_type], [out, 1, record_type], op=op)
        rows = np.empty((self.size, row.size), np.float64) if self.rank == 0 else None
        self.world.Gather(np.ascontiguousarray(row, np.float64), rows, root=0)
        return out, rows

    def link_probe(self, hosts, nbytes: int = PROBE_BYTES, repeats: int = PROBE_REPEATS, timeout_s: float = 30.0):
        """Every rank calls it with rank 0's list of the ranks' hosts (None elsewhere). With ranks on more
        than one host, rank 0 measures the link to each other host in turn, one at a time so that no two
        share a link: the round trip of a small message and the bandwidth of `repeats` round trips of
        `nbytes` with that host's first rank. Returns, on rank 0, [{"host", "rank", "mb_s", "rtt_ms"}] per
        other host (None elsewhere, or with one host). A host that does not answer within timeout_s (times
        its turn: it waits while the hosts before it are probed) ends the job, as a rank that misses a
        collective does."""
        import numpy as np

        hosts = self.world.bcast(hosts, root=0)
        leaders = host_leaders(hosts)
        if len(leaders) < 2:
            return None
        big, small = np.zeros(nbytes, np.uint8), np.zeros(8, np.uint8)
        out = []
        for turn, (host, peer) in enumerate(list(leaders.items())[1:]):
            if self.rank not in (0, peer):
                continue
            other = peer if self.rank == 0 else 0
            label = f"the link probe between rank 0 and host {host} (rank {peer})"
            # A host's first message waits while rank 0 probes the hosts before it: each turn gets its own limit.
            wait_s = timeout_s * (turn + 1)
            trip = functools.partial(self._round_trip, other=other, timeout_s=wait_s, label=label)
            trip(small)  # warm the connection: the first message sets it up
            t0 = time.perf_counter()
            trip(small)
            rtt = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(repeats):
                trip(big)
            seconds = time.perf_counter() - t0
            if self.rank == 0:
                mb_s = 2 * repeats * nbytes / max(seconds, 1e-9) / 1e6
                out.append({"host": host, "rank": peer, "mb_s": round(mb_s, 1), "rtt_ms": round(rtt * 1e3, 3)})
        # Everyone waits (sleeping) until the last link is timed: a rank that went on to compile would take
        # the cores the probe's two ends need, and the link would look slower than it is.
        self._wait(self.world.Ibarrier(), self.world, timeout_s * len(leaders), "the link probe", who="a rank")
        return out if self.rank == 0 else None

    def _round_trip(self, buf, other: int, timeout_s: float, label: str, tag: int = 7302) -> None:
        """`buf` from rank 0 to `other` and back (rank 0 sends first, the other answers)."""
        order = ("send", "recv") if self.rank == 0 else ("recv", "send")
        for what in order:
            if what == "send":
                request = self.world.Isend(buf, dest=other, tag=tag)
            else:
                request = self.world.Irecv(buf, source=other, tag=tag)
            spin_until = time.perf_counter() + 0.02  # a fast link answers in well under this: time it closely
            while time.perf_counter() < spin_until and not request.Test():
                pass
            self._wait(request, self.world, timeout_s, label, who=f"rank {other}")

    def gather_to_root(self, obj):
        return self.world.gather(obj, root=0)

    def bcast(self, obj):
        return self.world.bcast(obj, root=0)

    def barrier(self):
        self.world.Barrier()

    def abort(self, code: int = 1):
        # The line that says why was just printed; across hosts it travels through the launcher's proxy,
        # which the abort tears down: a moment's pause lets it arrive first.
        time.sleep(ABORT_PAUSE_S)
        self.world.Abort(code)


def make_comm():
    return MpiComm() if launched_size() > 1 else LocalComm()
