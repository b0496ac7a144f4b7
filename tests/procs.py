"""Test helpers over Linux's /proc: a process's descendants and the TCP addresses they listen on.

What ``ss -ltnp`` shows, read from ``/proc/net/tcp{,6}`` and ``/proc/<pid>/fd`` so that a test needs no tool and
sees only the processes it started (other users of the machine may run their own Ray).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

LISTEN = "0A"


def children_of() -> dict[int, list[int]]:
    """Parent pid -> its child pids, for every process visible now."""
    out: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(p.name))
    return out


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it (children, their children, …) alive now."""
    kids, out, todo = children_of(), set(), [pid]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(kids.get(p, []))
    return out


def start_time(pid: int) -> int:
    """When ``pid`` started, in clock ticks since boot (field 22 of ``/proc/<pid>/stat``)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def command(pid: int) -> str:
    """The command line of ``pid`` (arguments joined by spaces; "" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _decode(hex_addr: str) -> tuple[str, int]:
    """``0100007F:1F90`` (IPv4) or the 32-digit IPv6 form of /proc/net/tcp6 -> (address, port)."""
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(struct.pack("<I", w) for w in struct.unpack(f">{len(raw) // 4}I", raw))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words), int(port, 16)


def _listening_inodes() -> dict[str, tuple[str, int]]:
    """Socket inode -> (address, port) of every listening TCP socket (IPv4 and IPv6)."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == LISTEN:
                out[f[9]] = _decode(f[1])
    return out


def listening(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every TCP socket that one of ``pids`` listens on."""
    inodes, out = _listening_inodes(), []
    for pid in sorted(pids):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                out.append((pid, *inodes[link[8:-1]]))
    return sorted(set(out))


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address (``::ffff:127.0.0.1``); never 0.0.0.0 / ``::``."""
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def beyond_loopback(pids: set[int]) -> list[str]:
    """``"<address>:<port> (pid N: command)"`` for every listening socket of ``pids`` not bound to loopback."""
    return [f"{addr}:{port} (pid {pid}: {command(pid)[:80]})" for pid, addr, port in listening(pids)
            if not is_loopback(addr)]


def fake_head(folder: Path) -> tuple[subprocess.Popen, str]:
    """A sleeper whose command line is a head's (``<python> …/ray start --head --block --temp-dir=T``), in its own
    process group: what `assay cluster` accepts as its head, or what a reused pid would look like. Returns the
    process (the caller kills it) and ``T``."""
    script = folder / "bin" / "ray"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text("import time\ntime.sleep(600)\n")
    temp = f"/tmp/assay-ray-test-{os.getpid()}-{abs(hash(str(folder))) % 10**6}"
    proc = subprocess.Popen([sys.executable, str(script), "start", "--head", "--block", f"--temp-dir={temp}"],
                            start_new_session=True)
    return proc, temp
