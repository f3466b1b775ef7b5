"""A network namespace behind a veth pair, for fault tests that cut a process off the network.

``with veth_namespace() as ns:`` creates a namespace ``ns.name`` and a veth pair: ``ns.host_ip``
on the root namespace's end, ``ns.ns_ip`` inside (a /30 of 10.213.0.0/16 chosen from the pid,
skipping any that overlaps an address or route of this host). Run a command inside with
``ns.command(...)`` (``ip netns exec``, which keeps the pid). ``ns.black_hole()`` drops every
packet that crosses the veth, in both directions, where it arrives (iptables ``INPUT`` in the
namespace and in the root namespace): both ends see silence, never a reset or an
``EPERM``, as behind a dead link. ``ns.heal()`` removes the rules. Leaving the ``with`` block
removes the rules, the veth pair and the namespace, also when the test failed.

Needs root, ``ip`` (iproute2) and ``iptables``; :func:`unavailable` says why not, if not.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

SUPERNET = ipaddress.ip_network("10.213.0.0/16")
_counter = itertools.count()


def unavailable() -> str | None:
    """Why namespaces cannot be used here (``None`` when they can)."""
    if os.geteuid() != 0:
        return "network namespaces and iptables need root"
    missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


def _run(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Networks of this host's IPv4 addresses and routes (root namespace)."""
    used = []
    for link in json.loads(_run("ip", "-j", "-4", "addr", "show") or "[]"):
        for a in link.get("addr_info", []):
            used.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
    for route in json.loads(_run("ip", "-j", "-4", "route", "show") or "[]"):
        if route.get("dst", "default") != "default":
            used.append(ipaddress.ip_network(route["dst"], strict=False))
    return used


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 of ``SUPERNET`` that no address or route of this host overlaps; the start of the
    search depends on the pid, so concurrent test runs pick different ones."""
    subnets = list(SUPERNET.subnets(new_prefix=30))
    used = _networks_in_use()
    start = (os.getpid() * 7 + next(_counter)) % len(subnets)
    for i in range(len(subnets)):
        candidate = subnets[(start + i) % len(subnets)]
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise RuntimeError(f"no free /30 left in {SUPERNET}")


@dataclass
class Namespace:
    """A namespace ``name`` linked to the root namespace by a veth pair (see the module)."""

    name: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str
    prefixlen: int
    _cut: bool = field(default=False, repr=False)

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` run inside the namespace (same pid: ``ip netns exec`` execs in place)."""
        return ["ip", "netns", "exec", self.name, *args]

    def _rules(self) -> list[tuple[list[str], list[str]]]:
        """(command prefix, rule) of each DROP rule: packets arriving through the veth."""
        return [
            (["ip", "netns", "exec", self.name, "iptables", "-w"],
             ["INPUT", "-i", self.ns_if, "-j", "DROP"]),
            (["iptables", "-w"],
             ["INPUT", "-i", self.host_if, "-m", "comment", "--comment",
              f"scheduler test {self.name}", "-j", "DROP"]),
        ]  # fmt: skip

    def black_hole(self) -> None:
        """Drop every packet crossing the veth, both ways, silently (idempotent)."""
        if self._cut:
            return
        self._cut = True  # before the rules, so heal() removes a half-installed cut
        for prefix, rule in self._rules():
            _run(*prefix, "-I", *rule)

    def heal(self) -> None:
        """Remove the rules of :meth:`black_hole` (idempotent)."""
        if not self._cut:
            return
        for prefix, rule in self._rules():
            # -C: the rule is there; delete every copy (a failed -I leaves none)
            while subprocess.run([*prefix, "-C", *rule], capture_output=True,
                                 check=False).returncode == 0:  # fmt: skip
                _run(*prefix, "-D", *rule)
        self._cut = False

    def remove(self) -> None:
        """Heal, then delete the veth pair and the namespace; tolerates half-built state."""
        errors = []
        for step in (
            self.heal,
            lambda: _run("ip", "link", "del", self.host_if),  # deletes both ends
            lambda: _run("ip", "netns", "del", self.name),
        ):
            try:
                step()
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                errors.append(str(exc))
        leftovers = [e for e in errors if "Cannot find device" not in e
                     and "No such file" not in e]  # fmt: skip
        if leftovers:
            raise RuntimeError("namespace clean-up failed: " + "; ".join(leftovers))


def _build(ns: Namespace) -> None:
    _run("ip", "netns", "add", ns.name)
    _run("ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if)
    _run("ip", "link", "set", ns.ns_if, "netns", ns.name)
    _run("ip", "addr", "add", f"{ns.host_ip}/{ns.prefixlen}", "dev", ns.host_if)
    _run("ip", "link", "set", ns.host_if, "up")
    inside = ["ip", "netns", "exec", ns.name, "ip"]
    _run(*inside, "addr", "add", f"{ns.ns_ip}/{ns.prefixlen}", "dev", ns.ns_if)
    _run(*inside, "link", "set", ns.ns_if, "up")
    _run(*inside, "link", "set", "lo", "up")


@contextlib.contextmanager
def veth_namespace() -> Iterator[Namespace]:
    """A new namespace behind a veth pair, removed on exit (see the module docstring).

    Raises:
        RuntimeError: an ``ip`` or ``iptables`` command failed (its stderr is in the message).
    """
    subnet = _free_subnet()
    host_ip, ns_ip = subnet.hosts()
    tag = f"{os.getpid() % 1_000_000}x{next(_counter)}"  # interface names: 15 bytes at most
    ns = Namespace(f"schedtest{tag}", f"sch{tag}h", f"sch{tag}n", str(host_ip), str(ns_ip),
                   subnet.prefixlen)  # fmt: skip
    try:
        _build(ns)
        yield ns
    finally:
        ns.remove()
