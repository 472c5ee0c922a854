"""The test runner executed inside the sandbox, in a private namespace (see ``code.STUB``).

argv: ``REPORT_FD LIMITS`` (``NAME=VALUE`` resource limits joined by commas, e.g. ``CPU=6,NOFILE=64``).

stdin: the run's token on the first line, the length in bytes of the code on the second, then the
code and the tests (UTF-8). Only C modules and ``types`` are imported, to start fast. The solution runs
first, then the tests, in a worker thread; the token is written to ``REPORT_FD`` only when the last
test statement has returned and the interpreter's shared state is as the tests found it. The token
lives in ``_run``'s local variables only: frames, the garbage collector, tracing, ctypes, native code
from outside the Python installation, new code objects and new processes are refused to the solution
by an audit hook, so it cannot read the token or jump over a test.
Python signal handlers run in the main thread only, and the solution runs in another, so no handler
receives a frame either. This file is standard library only; it is not imported by the trainer.
"""

import _signal
import _thread
import builtins
import importlib  # noqa: F401  its import renames the frozen import machinery's modules
import opcode
import os
import resource
import sys
import types  # noqa: F401  its import reads a traceback's frame: loaded before the hook refuses frames

ModuleType = type(sys)
_modules, _sys_vars = sys.modules, vars(sys)
_FRAME_ATTRS = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})
_CODE_ATTRS = frozenset({"__code__"})
_REFUSED = frozenset({
    "sys.settrace", "sys.setprofile", "sys._current_frames", "sys._current_exceptions", "code.__new__",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "subprocess.Popen",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function",
})
_PREFIX = os.path.realpath(sys.base_prefix) + "/"  # native code loads from the Python installation only
_REFUSED_MODULES = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "_testcapi", "_testinternalcapi",
                              "_xxsubinterpreters", "_xxinterpchannels"})


def _hook(event, args):
    if event in _REFUSED:
        raise PermissionError(f"{event} is not allowed")
    if event == "sys._getframe":
        raise ValueError("frames are not available")  # the standard library treats this as 'no frame'
    if event == "object.__getattr__" and args[1] in _FRAME_ATTRS:
        raise AttributeError(f"{args[1]} is not available")
    if event == "object.__setattr__" and args[1] in _CODE_ATTRS:
        raise PermissionError(f"setting {args[1]} is not allowed")
    if event == "import" and (args[0].partition(".")[0] in _REFUSED_MODULES or args[1] is not None and not (
            type(args[1]) is str and args[1].startswith(_PREFIX) and "/.." not in args[1])):
        raise PermissionError(f"import of {args[0]} from {args[1]} is not allowed")


def _ids(pairs):
    return tuple(id(x) for pair in pairs for x in pair)


FunctionType = type(_ids)


def _identity(value):
    """Identities of ``value`` and, for a function, of its code and defaults."""
    if type(value) is not FunctionType:
        return id(value)
    kw = value.__kwdefaults__
    return id(value), id(value.__code__), id(value.__defaults__), _ids(kw.items()) if type(kw) is dict else id(kw)


def _state(names):
    """Identities of what the tests reach through imports: the import machinery, and the modules
    ``names`` in sys.modules with their namespaces and the attributes of their classes."""
    machinery = [_sys_vars.get(k) for k in ("modules", "meta_path", "path_hooks", "path")]
    items = [tuple(map(id, machinery)), _ids(machinery[1:])]
    for name in sorted(names):
        module = _modules.get(name)
        items.append((id(name), id(module)))
        if name in ("sys", "builtins", "__main__") or type(module) is not ModuleType:
            continue
        for key, value in list(vars(module).items()):
            if type(value) is ModuleType and _modules.get(f"{name}.{key}") is value:
                continue  # a submodule: importing it adds this attribute, and it is checked on its own
            items.append((id(key), _identity(value)))
            if isinstance(value, type) and value.__flags__ & (1 << 9):  # heap type: attributes can change
                items.append(tuple((id(k), _identity(v)) for k, v in list(vars(value).items())))
    return tuple(items)


def _imported(code):
    """Names of the modules that ``code`` and the functions in it import."""
    names, raw, extended = set(), code.co_code, 0
    for i in range(0, len(raw), 2):
        op, arg = raw[i], raw[i + 1] | extended
        extended = arg << 8 if op == opcode.EXTENDED_ARG else 0
        if op == opcode.opmap["IMPORT_NAME"]:
            names.add(code.co_names[arg])
    for const in code.co_consts:
        if type(const) is type(code):
            names |= _imported(const)
    return names


def _run(token, report_fd, err_fd, code, tests):
    write, exit_, count = os.write, os._exit, _thread._count
    pristine = dict(vars(builtins))
    snapshot = _ids(pristine.items())
    outcome = "tests passed"
    try:
        tests = compile(tests, "<tests>", "exec")
        for name in _imported(tests):  # imported before the solution runs, so that changes show
            try:
                __import__(name)
            except (ImportError, ValueError):  # the tests may expect that, or import relatively
                pass
        present = set(_modules)
        before = _state(present)
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        exec(compile(code, "<solution>", "exec"), namespace)
        if _state(present) != before:
            raise RuntimeError("the solution changed a module it did not import")
        present = set(_modules)
        start = _state(present)
        env = {k: v for k, v in namespace.items() if k != "__builtins__"}
        env["__builtins__"] = pristine
        exec(tests, env)
        if _state(present) != start or _ids(pristine.items()) != snapshot:
            raise RuntimeError("a module or builtin changed while the tests ran")
        if count() != 1:
            raise RuntimeError("threads started by the solution are still running")
        write(report_fd, token)
    except BaseException as exc:  # noqa: B902  any way out of the tests is a failure
        outcome = type(exc).__name__
        try:
            outcome += f": {str(exc)[:500]}"
        except BaseException:  # noqa: B902  a message that cannot be printed
            pass
    try:
        write(err_fd, f"\n{outcome}\n".encode())
    except OSError:  # the solution closed it
        pass
    exit_(0)


def _limits(spec):
    for item in spec.split(","):
        name, value = item.split("=")
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (int(value), int(value)))


def main():
    report_fd, limits = int(sys.argv[-2]), sys.argv[-1]
    stdin = sys.stdin.buffer
    token = stdin.readline().strip()
    size = int(stdin.readline())
    code = stdin.read(size).decode()
    tests = stdin.read().decode()
    err_fd = os.dup(2)  # the runner's messages; the solution's stdin, stdout and stderr are /dev/null
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.set_inheritable(report_fd, False)
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)  # past the file-size limit a write fails, not the process
    _limits(limits)
    sys.addaudithook(_hook)
    _thread.start_new_thread(_run, (token, report_fd, err_fd, code, tests))
    del token
    wait = _thread.allocate_lock()
    wait.acquire()
    wait.acquire()  # forever: the worker ends the process with os._exit


main()
