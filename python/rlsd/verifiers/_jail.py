"""Bounds a sandboxed process puts on itself before it reads any code (prepended to both processes' scripts).

``jail(mounts)`` runs first thing in the solution's and the tests' processes. With ``mounts`` (in
bwrap, where the process starts as root of its own user namespace with ``CAP_SYS_ADMIN`` and
``CAP_SETPCAP`` there) it mounts fresh tmpfs on ``/tmp`` and ``/dev/shm`` bounded in size and in
inodes (bwrap's ``--size`` bounds bytes only: 100000 empty files or directories would hold kernel
memory), then drops every capability and the bounding set. Always, it sets ``no_new_privs`` and
loads a seccomp filter (``FILTER``, classic BPF assembled here) that refuses: new processes (``fork``,
``vfork``, ``clone`` without ``CLONE_THREAD``, ``clone3``, ``execve``), so the address-space limit
bounds the sandbox's memory as a whole; sockets but ``AF_UNIX``; ``memfd_create``; setting extended
attributes; and the kernel interfaces a solution never needs (``io_uring``, ``bpf``, ``userfaultfd``,
``perf_event_open``, keys, ``ptrace``, mounts, namespaces, modules). ctypes, used for this, is
then dropped from ``sys.modules`` (the solution's audit hook refuses importing it again).
"""

import ctypes
import errno as _errno
import os
import struct
import sys

TMP_BYTES, SHM_BYTES, INODES = 16 << 20, 1 << 20, 1024
_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
_SYSCALLS = {  # name: (x86_64, aarch64); None where the architecture has no such call
    "fork": (57, None), "vfork": (58, None), "execve": (59, 221), "execveat": (322, 281), "clone3": (435, 435),
    "memfd_create": (319, 279), "memfd_secret": (447, 447),
    "setxattr": (188, 5), "lsetxattr": (189, 6), "fsetxattr": (190, 7), "setxattrat": (463, 463),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427), "bpf": (321, 280),
    "userfaultfd": (323, 282), "perf_event_open": (298, 241), "keyctl": (250, 219), "add_key": (248, 217),
    "request_key": (249, 218), "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "unshare": (272, 97), "setns": (308, 268),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431),
    "fsmount": (432, 432), "fspick": (433, 433), "mount_setattr": (442, 442), "kexec_load": (246, 104),
    "kexec_file_load": (320, 294), "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "open_by_handle_at": (304, 265), "name_to_handle_at": (303, 264), "fanotify_init": (300, 262),
    "acct": (163, 89), "swapon": (167, 224), "swapoff": (168, 225), "reboot": (169, 142), "quotactl": (179, 60),
    "pidfd_getfd": (438, 438), "kcmp": (312, 272),
}
_AF_UNIX, _CLONE_THREAD = 1, 0x10000
_LD_W_ABS, _JEQ, _JSET, _RET = 0x20, 0x15, 0x45, 0x06
_ALLOW, _KILL = 0x7FFF0000, 0x80000000
_NR, _ARCH, _ARG0 = 0, 4, 16  # offsets in struct seccomp_data (arguments are 64-bit, little-endian)


def _errno_ret(code):
    return 0x00050000 | code


def _op(code, k, jt=0, jf=0):
    return struct.pack("<HBBI", code, jt, jf, k)


def program(machine: str) -> bytes:
    """The seccomp filter for ``machine`` (``os.uname().machine``), as ``struct sock_filter`` entries."""
    column = ("x86_64", "aarch64").index(machine)
    socket, socketpair, clone = {"x86_64": (41, 53, 56), "aarch64": (198, 199, 220)}[machine]
    ops = [_op(_LD_W_ABS, _ARCH), _op(_JEQ, _AUDIT_ARCH[machine], 1, 0), _op(_RET, _KILL), _op(_LD_W_ABS, _NR)]
    if machine == "x86_64":  # the x32 ABI's numbers are past 0x40000000: refuse them all
        ops += [_op(0x35, 0x40000000, 0, 1), _op(_RET, _errno_ret(_errno.ENOSYS))]  # JGE
    for name, numbers in sorted(_SYSCALLS.items()):
        if numbers[column] is not None:
            refusal = _errno.ENOSYS if name == "clone3" else _errno.EPERM  # glibc falls back to clone on ENOSYS
            ops += [_op(_JEQ, numbers[column], 0, 1), _op(_RET, _errno_ret(refusal))]
    for number in (socket, socketpair):  # the first argument is the address family
        ops += [_op(_JEQ, number, 0, 4), _op(_LD_W_ABS, _ARG0), _op(_JEQ, _AF_UNIX, 1, 0),
                _op(_RET, _errno_ret(_errno.EAFNOSUPPORT)), _op(_RET, _ALLOW)]
    ops += [_op(_JEQ, clone, 0, 4), _op(_LD_W_ABS, _ARG0), _op(_JSET, _CLONE_THREAD, 1, 0),  # threads only
            _op(_RET, _errno_ret(_errno.EPERM)), _op(_RET, _ALLOW)]
    return b"".join(ops + [_op(_RET, _ALLOW)])


def _check(result, what):
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {_errno.errorcode.get(code, code)}")


def jail(mounts: bool) -> None:
    """Bound this process as the module docstring says; raises ``OSError`` if any step fails."""
    libc = ctypes.CDLL(None, use_errno=True)
    if mounts:
        for path, size in ((b"/tmp", TMP_BYTES), (b"/dev/shm", SHM_BYTES)):
            options = b"size=%d,nr_inodes=%d,mode=1777" % (size, INODES)
            _check(libc.mount(b"tmpfs", path, b"tmpfs", 0x2 | 0x4 | 0x8, options), "mount " + path.decode())  # nosuid nodev noexec
        for cap in range(64):  # PR_CAPBSET_DROP; EINVAL past the last capability
            if libc.prctl(24, cap, 0, 0, 0) != 0 and ctypes.get_errno() != _errno.EINVAL:
                _check(-1, "drop the bounding set")
        header = ctypes.create_string_buffer(struct.pack("<Ii", 0x20080522, 0))  # _LINUX_CAPABILITY_VERSION_3
        _check(libc.capset(header, ctypes.create_string_buffer(24)), "capset")
    _check(libc.prctl(38, 1, 0, 0, 0), "no_new_privs")  # PR_SET_NO_NEW_PRIVS
    machine = os.uname().machine
    if machine not in _AUDIT_ARCH:
        raise OSError(_errno.ENOSYS, f"no seccomp filter for {machine}")
    filt = program(machine)

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]
    fprog = Program(len(filt) // 8, filt)
    _check(libc.prctl(22, 2, ctypes.byref(fprog), 0, 0), "seccomp")  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
    for name in [m for m in sys.modules if m in ("ctypes", "_ctypes") or m.startswith("ctypes.")]:
        del sys.modules[name]
