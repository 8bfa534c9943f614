"""Hosts on one machine, as MPI sees them: Linux network namespaces joined by veth pairs on a bridge.

Each host is a network namespace with its own address (10.77.<net>.<2 + k>/24) and a default route through
the bridge; the launcher (tests/multihost/launch_in_host) runs a rank's command inside it under a UTS
namespace whose host name is the namespace's name. To MPICH these are separate hosts: different host
names, so no shared memory between them, and the bytes go through its network module over the veths.

`Hosts(n)` makes them and removes everything it made (processes in the namespaces, namespaces, veths,
bridge) on exit, also when the body raised or the process got SIGINT/SIGTERM. Root only (or
CAP_NET_ADMIN + CAP_SYS_ADMIN); `Hosts.unavailable()` says in one line why they cannot be made here.

Faults are link settings of a host's veth on the bridge side: `limit(k, rate)` (tc tbf: a slow link;
this kernel has no netem), `link_down(k)` / `link_up(k)` (a dropped link or a partition).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAUNCHER = HERE / "launch_in_host"
PREFIX = "jpmh"  # every name this harness gives starts with it (cleanup finds leftovers by it)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def leftovers() -> list[str]:
    """Namespaces and links named by this harness that exist now (empty after a clean exit)."""
    names = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines() if line.strip()]
    links = [
        line.split(":")[1].strip().split("@")[0]
        for line in _ip("-o", "link", "show", check=False).stdout.splitlines()
        if ":" in line
    ]
    return [n for n in names + links if n.startswith(PREFIX)]


class Hosts:
    """n namespaces as hosts `jpmh<net>h<k>`, with addresses 10.77.<net>.<2 + k> on bridge jpmh<net>br."""

    def __init__(self, n: int, net: int | None = None):
        if not 1 <= n <= 8:
            raise ValueError(f"hosts: {n} is not between 1 and 8")
        self.n = n
        self.net = net if net is not None else 100 + os.getpid() % 100  # a subnet of its own per test process
        self.bridge = f"{PREFIX}{self.net}br"
        self.names = [f"{PREFIX}{self.net}h{k}" for k in range(n)]
        self.veths = [f"{PREFIX}{self.net}v{k}" for k in range(n)]
        self.addresses = [f"10.77.{self.net}.{2 + k}" for k in range(n)]
        self.gateway = f"10.77.{self.net}.1"
        self._old_handlers: dict = {}

    @staticmethod
    def unavailable() -> str | None:
        """One line saying why namespaces cannot be made here, or None when they can."""
        for tool in ("ip", "unshare", "tc"):
            if shutil.which(tool) is None:
                return f"multihost: `{tool}` is not installed (iproute2 / util-linux); install it to run these tests"
        if os.geteuid() != 0:
            return "multihost: network namespaces need root (or CAP_NET_ADMIN and CAP_SYS_ADMIN); run as root"
        probe = f"{PREFIX}probe{os.getpid()}"
        made = _ip("netns", "add", probe, check=False)
        if made.returncode != 0:
            return f"multihost: cannot create a network namespace here ({made.stderr.strip() or 'ip netns add failed'})"
        _ip("netns", "del", probe, check=False)
        return None

    def __enter__(self) -> Hosts:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _on_signal(self, signum, frame) -> None:
        self.close()
        signal.signal(signum, self._old_handlers.get(signum, signal.SIG_DFL))
        os.kill(os.getpid(), signum)

    def _make(self) -> None:
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for name, veth, address in zip(self.names, self.veths, self.addresses):
            _ip("netns", "add", name)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name)
            _ip("link", "set", veth, "master", self.bridge, "up")
            _ip("-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "lo", "up")
            _ip("-n", name, "route", "add", "default", "via", self.gateway)

    def close(self) -> None:
        """Kill what runs in the namespaces, then remove them, their veths and the bridge (idempotent)."""
        for name in self.names:
            pids = _ip("netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", name, check=False)
        for veth in self.veths:
            _ip("link", "del", veth, check=False)
        _ip("link", "del", self.bridge, check=False)
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        self._old_handlers = {}

    # -- what MPI needs ------------------------------------------------------------------------------

    def hostfile(self, path: Path, ranks_per_host: int = 1) -> Path:
        """A hydra hostfile: one line `NAME:RANKS` per host."""
        path.write_text("".join(f"{name}:{ranks_per_host}\n" for name in self.names))
        return path

    def mpiexec_args(self, hostfile: Path) -> list[str]:
        """Flags for the environment's mpiexec (hydra) to start ranks on these hosts through the launcher.
        -iface: the bridge, so the proxies are told an address they can reach from inside the namespaces."""
        return ["-f", str(hostfile), "-launcher", "ssh", "-launcher-exec", str(LAUNCHER), "-iface", self.bridge]

    @staticmethod
    def mpi_env() -> dict:
        """The environment for mpiexec: these hosts share one kernel, so UCX would see shared memory between
        them and use it; here it must take TCP, as between real hosts (MPICH's own shared memory still joins
        the ranks of one host: it goes by host name)."""
        return {"UCX_TLS": "tcp,self", "FI_PROVIDER": "tcp"}

    # -- link faults ---------------------------------------------------------------------------------

    def limit(self, k: int, rate: str) -> None:
        """Rate-limit host k's link (both directions pass its veth: tbf on the bridge side shapes what the
        host receives, tbf inside the namespace what it sends)."""
        shaping = (
            ["tc", "qdisc", "replace", "dev", self.veths[k]],
            ["tc", "-n", self.names[k], "qdisc", "replace", "dev", "eth0"],
        )
        for cmd in shaping:
            subprocess.run([*cmd, "root", "tbf", "rate", rate, "burst", "64kb", "latency", "400ms"], check=True)

    def link_down(self, k: int) -> None:
        _ip("link", "set", self.veths[k], "down")

    def link_up(self, k: int) -> None:
        _ip("link", "set", self.veths[k], "up")

    def bytes_through(self) -> int:
        """Bytes sent and received on all the hosts' veths since they were made."""
        total = 0
        for veth in self.veths:
            stats = Path(f"/sys/class/net/{veth}/statistics")
            total += int((stats / "rx_bytes").read_text()) + int((stats / "tx_bytes").read_text())
        return total


if __name__ == "__main__":  # python tests/multihost/netns.py: say whether hosts can be made here, list leftovers
    why = Hosts.unavailable()
    print(why or "multihost: network namespaces can be made here")
    if leftovers():
        print("left over:", " ".join(leftovers()))
    sys.exit(1 if why else 0)
