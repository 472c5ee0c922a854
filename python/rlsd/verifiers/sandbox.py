"""Bubblewrap (``bwrap``) isolation for generated code.

The sandbox sees a read-only ``/usr`` and the Python installation, a minimal read-only ``/dev``,
an empty private ``/tmp`` and ``/dev/shm`` of bounded size (the only writable places; the root is
read-only) and nothing else of the host (no project, no home, no ``/proc``, no ``/etc``); it has its own user, PID, network, IPC, UTS and cgroup namespaces (no network at all),
runs as ``nobody`` without capabilities or new user namespaces, and dies with its parent.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys

TMP_SIZE = 16 << 20  # bytes of the sandbox's private /tmp
SHM_SIZE = 1 << 20   # bytes of its /dev/shm; every other filesystem of the sandbox is read-only


class SandboxUnavailable(RuntimeError):
    """bwrap is missing or cannot create namespaces here."""


def python_prefix() -> str:
    """The directory holding the base interpreter and its standard library."""
    return os.path.realpath(sys.base_prefix)


def python_executable() -> str:
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _system_mounts() -> list:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    prefix = python_prefix()
    if not prefix.startswith("/usr/"):
        args += ["--ro-bind", prefix, prefix]
    return args


def bwrap_command(argv: list, bwrap: str = "bwrap") -> list:
    """``argv`` wrapped in bwrap with the isolation described in the module docstring."""
    return [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--uid", "65534", "--gid", "65534",
            "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp", "--hostname", "sandbox",
            *_system_mounts(), "--dev", "/dev", "--size", str(SHM_SIZE), "--tmpfs", "/dev/shm",
            "--remount-ro", "/dev", "--size", str(TMP_SIZE), "--tmpfs", "/tmp", "--remount-ro", "/",
            "--chdir", "/tmp", "--", *argv]


@functools.lru_cache(maxsize=None)
def check_bwrap(bwrap: str = "bwrap") -> str:
    """The path of a working ``bwrap``; raises :class:`SandboxUnavailable` with the reason otherwise."""
    path = shutil.which(bwrap)
    if path is None:
        raise SandboxUnavailable(
            f"{bwrap!r} not found: install bubblewrap (Debian: apt-get install bubblewrap), or pass the "
            "verifier option sandbox='none' to run generated code UNSANDBOXED on this host")
    probe = subprocess.run(bwrap_command([python_executable(), "-I", "-S", "-c", "pass"], path),
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        raise SandboxUnavailable(
            f"bwrap could not start a sandbox (exit {probe.returncode}: {probe.stderr.strip()[-300:]}); it needs "
            "bubblewrap >= 0.8 and user namespaces (a container may need them allowed); or pass the verifier "
            "option sandbox='none' to run generated code UNSANDBOXED on this host")
    return path
