"""Bubblewrap (``bwrap``) isolation for generated code.

The sandbox sees a read-only ``/usr`` and the Python installation, a minimal read-only ``/dev``,
an empty private ``/tmp`` and ``/dev/shm`` (the only writable places; the root is read-only) and
nothing else of the host (no project, no home, no ``/proc``, no ``/etc``); it has its own user,
PID, network, IPC, UTS and cgroup namespaces (no network at all) and dies with its parent. Its process starts as root of its user namespace with ``CAP_SYS_ADMIN`` and
``CAP_SETPCAP`` there, only so that ``_jail.jail`` can mount ``/tmp`` and ``/dev/shm`` bounded in
bytes and inodes; it then drops every capability and loads its seccomp filter before any code is read.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ._jail import INODES, SHM_BYTES as SHM_SIZE, TMP_BYTES as TMP_SIZE  # noqa: F401  (the sandbox's tmpfs bounds)

JAIL = (Path(__file__).parent / "_jail.py").read_text()  # prepended to the scripts run in a sandbox


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
    # no --disable-userns: it moves the process into a nested user namespace that cannot mount; the
    # seccomp filter refuses new namespaces instead (unshare, setns, clone3, clone of anything but a thread)
    return [bwrap, "--unshare-all", "--unshare-user", "--uid", "0", "--gid", "0",
            "--cap-drop", "ALL", "--cap-add", "CAP_SYS_ADMIN", "--cap-add", "CAP_SETPCAP", "--die-with-parent",
            "--new-session", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp",
            "--hostname", "sandbox", *_system_mounts(), "--dev", "/dev", "--size", str(SHM_SIZE), "--tmpfs", "/dev/shm",
            "--remount-ro", "/dev", "--size", str(TMP_SIZE), "--tmpfs", "/tmp", "--remount-ro", "/",
            "--chdir", "/tmp", "--", *argv]


PROBE = JAIL + "\njail(True)\n"  # what a sandbox must be able to do: mount its bounded tmpfs, drop capabilities, seccomp


@functools.lru_cache(maxsize=None)
def check_bwrap(bwrap: str = "bwrap") -> str:
    """The path of a working ``bwrap``; raises :class:`SandboxUnavailable` with the reason otherwise."""
    path = shutil.which(bwrap)
    if path is None:
        raise SandboxUnavailable(
            f"{bwrap!r} not found: install bubblewrap (Debian: apt-get install bubblewrap), or pass the "
            "verifier option sandbox='none' to run generated code UNSANDBOXED on this host")
    probe = subprocess.run(bwrap_command([python_executable(), "-I", "-S", "-c", PROBE], path),
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        raise SandboxUnavailable(
            f"bwrap could not start a sandbox (exit {probe.returncode}: {probe.stderr.strip()[-300:]}); it needs "
            "bubblewrap >= 0.8, user namespaces (a container may need them allowed) and seccomp on x86_64 or "
            "aarch64; or pass the verifier "
            "option sandbox='none' to run generated code UNSANDBOXED on this host")
    return path
