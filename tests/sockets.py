"""Which local addresses listen on a TCP port, read from /proc/net/tcp and tcp6 (Linux): tests use
it to check that a service binds the loopback interface only."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

LISTEN = "0A"  # the kernel's TCP_LISTEN state


def _address(hex_ip: str) -> str:
    raw = bytes.fromhex(hex_ip)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))  # four little-endian words
    ip = ipaddress.IPv6Address(words)
    return str(ip.ipv4_mapped or ip)


def listening(port: int) -> set[str]:
    """The addresses sockets listen on at `port` (0.0.0.0 or :: when bound to every interface)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            hex_ip, hex_port = fields[1].split(":")
            if fields[3] == LISTEN and int(hex_port, 16) == port:
                found.add(_address(hex_ip))
    return found


def loopback_only(port: int) -> bool:
    """Something listens on `port`, and only on loopback addresses."""
    found = listening(port)
    return bool(found) and all(ipaddress.ip_address(a).is_loopback for a in found)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
