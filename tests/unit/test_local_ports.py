"""Who holds a port the local cloud wants, in the words `local up` prints (pipectl.localcloud.ports)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from pipectl.localcloud import ports


def test_a_port_another_program_holds_is_named_with_that_program() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        port = held.getsockname()[1]

        with pytest.raises(ports.PortTaken) as taken:
            ports.ensure_free(port)

    message = str(taken.value)
    assert message.startswith(
        f"port {port} (the local cloud's AWS endpoint) is already in use by process {os.getpid()}"
    )
    assert "--port or PIPECTL_LOCAL_PORT" in message
    ports.ensure_free(port)  # free again once closed


def test_a_free_port_passes_and_port_zero_is_never_checked() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ports.ensure_free(port)
    ports.ensure_free(0)


def test_only_a_local_cloud_daemon_has_a_state_folder_and_an_exited_process_is_not_running() -> None:
    me = psutil.Process()
    assert ports.daemon_state_dir(me) is None and ports.daemon(me.pid) is None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    process = psutil.Process(child.pid)
    for _ in range(600):  # count-bounded: until it has exited (a zombie until reaped)
        if not ports.running(process):
            break
        time.sleep(0.05)
    assert not ports.running(process)  # exited, even before its parent reaps it
    assert ports.wait_gone([process], polls=1) == []
    child.wait()
