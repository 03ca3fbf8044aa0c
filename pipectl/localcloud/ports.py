"""The local cloud's processes from outside: who holds a port, which process is a local cloud daemon
(and of which state folder), and waiting, bounded, for processes to exit.

``local up`` checks its port here before it starts a daemon, and the daemon fails with the same
words when it cannot bind; ``local down`` waits here for the daemon and its workers.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

DAEMON_MODULE = "pipectl.localcloud.daemon"
PORT_TAKEN_EXIT = 3  # the daemon's exit status when its port is taken
FAILED = "local cloud failed: "  # how the daemon's log says why it stopped
ENDPOINT = "the local cloud's AWS endpoint"


class PortTaken(Exception):
    """A port the local cloud needs is in use; the message names the port and, when it can, its holder."""

    def __init__(self, port: int, what: str = ENDPOINT) -> None:
        self.port = port
        super().__init__(taken_message(port, what))


def ensure_free(port: int, host: str = "127.0.0.1", what: str = ENDPOINT) -> None:
    """Raise :class:`PortTaken` when ``host:port`` cannot be bound; a check, the port stays free."""
    if port != 0:
        bind(port, host, what).close()


def bind(port: int, host: str = "127.0.0.1", what: str = ENDPOINT) -> socket.socket:
    """A socket listening on ``host:port`` (0: any free port), or :class:`PortTaken`. Binds as the
    servers do (SO_REUSEADDR), so a port left in TIME_WAIT by a cloud that just stopped is free."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortTaken(port, what) from exc
        raise
    return sock


def taken_message(port: int, what: str = ENDPOINT) -> str:
    """Why the port cannot be had, naming the local cloud (state folder, process) that holds it."""
    holder = listener(port)
    choose = "or start this one on another port (--port or PIPECTL_LOCAL_PORT)"
    if holder is None:
        return f"port {port} ({what}) is already in use by another program: stop it, {choose}"
    state_dir = daemon_state_dir(holder)
    if state_dir is not None:
        return (
            f"port {port} ({what}) is taken by another local cloud: state folder {state_dir}, process {holder.pid};"
            f" stop it with `pipectl local down --state-dir {state_dir}`, {choose}"
        )
    return f"port {port} ({what}) is already in use by process {holder.pid} ({_command(holder)}): stop it, {choose}"


def listener(port: int) -> psutil.Process | None:
    """The process listening on TCP ``port``, when this user may see it."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:  # macOS without root: look at this user's processes one by one
        return _listener_among_own(port)
    for connection in connections:
        if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port:
            if connection.pid is None:
                return None  # another user's process
            try:
                return psutil.Process(connection.pid)
            except psutil.NoSuchProcess:
                return None
    return None


def _listener_among_own(port: int) -> psutil.Process | None:
    for process in psutil.process_iter():
        try:
            if any(
                c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                for c in process.net_connections(kind="tcp")
            ):
                return process
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return None


def daemon_state_dir(process: psutil.Process) -> Path | None:
    """The state folder of a local cloud daemon (None: ``process`` is no local cloud daemon)."""
    try:
        command = process.cmdline()
        cwd = Path(process.cwd())
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    if DAEMON_MODULE not in command or "--state-dir" not in command:
        return None
    given = command[command.index("--state-dir") + 1 : command.index("--state-dir") + 2]
    return (cwd / given[0]).resolve() if given else None


def daemon(pid: int) -> psutil.Process | None:
    """The local cloud daemon running as ``pid`` (None: no such process, or ``pid`` was reused)."""
    try:
        process = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
    return process if running(process) and daemon_state_dir(process) is not None else None


def running(process: psutil.Process) -> bool:
    """Whether ``process`` still runs: an exited one its parent has not reaped yet (a zombie) does not."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def workers(process: psutil.Process) -> list[psutil.Process]:
    """The processes ``process`` started and that die with it (the embedded PostgreSQL outlives it)."""
    try:
        children = process.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    kept = []
    for child in children:
        try:
            if child.name() != "postgres":
                kept.append(child)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return kept


def wait_gone(processes: Iterable[psutil.Process], polls: int, interval_s: float = 0.2) -> list[psutil.Process]:
    """Wait until none of ``processes`` runs, polling at most ``polls`` times; those still running."""
    left = list(processes)
    for _ in range(polls):
        left = [p for p in left if running(p)]
        if not left:
            return []
        time.sleep(interval_s)
    return [p for p in left if running(p)]


def describe(process: psutil.Process) -> str:
    return f"{process.pid} ({_command(process)})"


def _command(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())[:120] or process.name()
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return "?"
