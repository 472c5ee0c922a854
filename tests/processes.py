"""Helpers of the multi-process tests (gloo process groups on this machine)."""

import socket


def free_port() -> int:
    """A free TCP port on the loopback interface for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
