"""The addresses a node tells peers, when it listens on every interface.

py-libp2p reports a ``/ip4/0.0.0.0/tcp/P`` listener as exactly that, and an
unspecified address is useless to another host: nobody can dial it.  Such a
listener is replaced by one address per interface address of this host that
is up (link-local IPv6 is left out: it needs a zone to be dialled), loopback
last, so a peer on another host tries a routable address first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

UNSPECIFIED = {"ip4": "0.0.0.0", "ip6": "::"}


def expand_unspecified(addrs: Sequence[str], host_ips: Iterable[str]) -> list[str]:
    """``addrs`` with each ``/ip4/0.0.0.0/...`` (``/ip6/::/...``) replaced by
    the same address on every IP of ``host_ips`` of its family.

    Pure: ``host_ips`` are this host's interface addresses (``host_ips()``).
    Other addresses stay as they are; duplicates are dropped; the addresses
    one listener expands to keep the interfaces' order, loopback last.
    """
    ips = list(dict.fromkeys(host_ips))
    out: list[str] = []
    for addr in addrs:
        parts = addr.split("/")
        # "/ip4/0.0.0.0/tcp/4021/p2p/..." -> ["", "ip4", "0.0.0.0", "tcp", ...]
        if len(parts) < 3 or UNSPECIFIED.get(parts[1]) != parts[2]:
            out.append(addr)
            continue
        version = 4 if parts[1] == "ip4" else 6
        routable: list[str] = []
        loopback: list[str] = []
        for ip in ips:
            parsed = ipaddress.ip_address(ip)
            if parsed.version != version or parsed.is_link_local or parsed.is_unspecified:
                continue
            expanded = "/".join([*parts[:2], str(parsed), *parts[3:]])
            (loopback if parsed.is_loopback else routable).append(expanded)
        out += routable + loopback
    return list(dict.fromkeys(out))


def host_ips() -> list[str]:
    """The IP addresses of this host's interfaces that are up (psutil)."""
    import socket

    import psutil

    stats = psutil.net_if_stats()
    found = []
    for name, entries in psutil.net_if_addrs().items():
        if name in stats and not stats[name].isup:
            continue
        for entry in entries:
            if entry.family in (socket.AF_INET, socket.AF_INET6):
                found.append(entry.address.split("%", 1)[0])  # fe80::1%eth0: zone off
    return found


__all__ = ["expand_unspecified", "host_ips"]
