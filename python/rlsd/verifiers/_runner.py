"""The solution's process of the code verifier, run in its own sandbox after ``_plain.py``'s source.

argv: ``REPLY_FD LIMITS MOUNTS`` (``NAME=VALUE`` resource limits joined by commas, e.g.
``CPU=6,NOFILE=64``; ``mounts`` when ``_jail.jail`` is to mount the bounded tmpfs).
Requests arrive as frames on stdin, replies leave on ``REPLY_FD``; both ends belong to the tests'
process (``_tests.py``), never to the host. The first request is ``["module", source]`` (executed
once as module ``solution``; answered ``["ready"]``) or ``["program", source]`` (a program run once
per ``run`` request; answered ``["ready"]`` at once). Then each request is answered ``["value",
plain, updates]``, ``["stop"]`` (an iterator is exhausted) or ``["error", type name, message]``:

- ``["get", name]``: a global of the solution (not a builtin: the tests' builtins are their own);
- ``["attr", n, name]``, ``["item", n, key]``, ``["iter", n]``, ``["next", n]``, ``["len", n]``,
  ``["bool", n]``, ``["str", n]``, ``["repr", n]``: that operation on object ``n``;
- ``["call", n, args, kwargs]``: a call, by value-result: ``updates`` lists ``[position or keyword,
  new value]`` for each list, dict or set argument that the call changed, for the tests' process
  to copy back into its own object;
- ``["run", stdin]``: the program's output (file descriptor 1) when it reads ``stdin`` (descriptor 0).

A value that is not plain data is kept here as object ``n`` and travels as ``{"h": n}``. Nothing
here is trusted: the verdict is the tests' process's. The audit hook only keeps the promises of the
sandbox: no new processes, and native code only from the Python installation, never ctypes or the
test modules.
"""

import _signal
import builtins
import os
import resource
import sys

MAX_REQUEST = 1 << 26  # bytes of one request (the first carries the source)
MAX_OUTPUT = 1 << 24   # bytes of a program's output read back (the file-size limit is lower by default)
_REFUSED = frozenset({"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
                      "subprocess.Popen"})  # the seccomp filter refuses them too; every ctypes.* event is refused
_REFUSED_MODULES = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "_xxsubinterpreters", "_xxinterpchannels",
                              "_xxtestfuzz", "_ctypes_test"})
_PREFIX = os.path.realpath(sys.base_prefix) + "/"  # native code loads from the Python installation only
_MUTABLE = (list, dict, set)


def _refused_module(name):
    return name in _REFUSED_MODULES or name.startswith("_test")


def _hook(event, args):
    if event in _REFUSED or event.startswith("ctypes."):  # _jail loaded _ctypes: it stays cached, and inert
        raise PermissionError(f"{event} is not allowed")
    if event == "import":
        name, path = args[0], args[1]
        # every part of the name: the finder starts from the first, an extension initialises from the last
        refused = type(name) is not str or any(map(_refused_module, name.split(".")))
        if path is not None:
            refused = refused or type(path) is not str or not path.startswith(_PREFIX) or "/.." in path or \
                _refused_module(os.path.basename(path).partition(".")[0])
        if refused:
            raise PermissionError(f"import of {name!r} from {path!r} is not allowed")


def _limits(spec):
    for item in spec.split(","):
        name, value = item.split("=")
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (int(value), int(value)))


def _describe(exc):
    try:
        return ["error", type(exc).__name__, str(exc)[:500]]
    except BaseException:  # noqa: B902  a message that cannot be printed
        return ["error", type(exc).__name__, ""]


def _feed(fd, data):
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:  # the program ended without reading everything
        pass
    finally:
        os.close(fd)


def _run_program(code, stdin):
    """What ``code`` writes to descriptor 1 (``print``, ``sys.stdout``, ``os.write(1, ...)``) when it
    reads ``stdin`` from descriptor 0 (``input()``, ``sys.stdin``, ``open(0)``); ``exit()`` and
    ``sys.exit(0)`` end it."""
    import threading  # here, not at start-up: most solutions are modules

    read_end, write_end = os.pipe()
    feeder = threading.Thread(target=_feed, args=(write_end, stdin.encode()), daemon=True)
    feeder.start()
    saved = os.dup(0), os.dup(1)
    with open(os.open(os.environ.get("TMPDIR", "/tmp"), os.O_TMPFILE | os.O_RDWR, 0o600), "w+b") as out:
        os.dup2(read_end, 0)
        os.close(read_end)
        os.dup2(out.fileno(), 1)
        sys.stdin = open(0, encoding="utf-8", errors="replace", closefd=False)
        sys.stdout = stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)
        try:
            exec(code, {"__name__": "__main__", "__builtins__": builtins, "exit": sys.exit, "quit": sys.exit})
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise
        finally:
            try:
                stdout.flush()  # this wrapper, whatever the program did to sys.stdout
            finally:
                os.dup2(saved[0], 0)  # the pipe's last read end closes: the feeder stops
                os.dup2(saved[1], 1)
                os.close(saved[0])
                os.close(saved[1])
        out.seek(0)
        return out.read(MAX_OUTPUT).decode(errors="replace")


def _serve(channel, namespace, program):
    objects, numbers = [], {}  # number -> object, and id(object) -> number (objects are kept alive)

    def ref(value):
        if id(value) not in numbers:
            numbers[id(value)] = len(objects)
            objects.append(value)
        return numbers[id(value)]

    def answer(value, updates=()):
        return ["value", encode(value, ref), list(updates)]

    def call(fn, args, kwargs):
        values = [decode(a, objects.__getitem__) for a in args]
        named = {k: decode(v, objects.__getitem__) for k, v in kwargs.items()}
        result = fn(*values, **named)
        updates = [[i, after] for i, (v, before) in enumerate(zip(values, args))
                   if type(v) in _MUTABLE for after in [encode(v, ref)] if after != before]
        updates += [[k, after] for k, v in named.items()
                    if type(v) in _MUTABLE for after in [encode(v, ref)] if after != kwargs[k]]
        return answer(result, updates)

    while True:
        try:
            request = channel.receive()
        except (EOFError, NotPlain):
            os._exit(0)
        try:
            op = request[0]
            target = objects[request[1]] if op not in ("get", "run") else None
            if op == "get":
                if request[1] not in namespace:
                    raise NameError(f"name {request[1]!r} is not defined")
                reply = answer(namespace[request[1]])
            elif op == "attr":
                reply = answer(getattr(target, request[2]))
            elif op == "item":
                reply = answer(target[decode(request[2], objects.__getitem__)])
            elif op == "call":
                reply = call(target, request[2], request[3])
            elif op == "next":
                try:
                    reply = answer(next(target))
                except StopIteration:
                    reply = ["stop"]
            elif op in ("iter", "len", "bool", "str", "repr"):
                reply = answer({"iter": iter, "len": len, "bool": bool, "str": str, "repr": repr}[op](target))
            elif op == "run" and program is not None:
                reply = answer(_run_program(program, request[1]))
            else:
                reply = ["error", "ValueError", f"unknown request {op!r}"]
            channel.send(reply)
        except BaseException as exc:  # noqa: B902  whatever the solution raises is the test's failure
            channel.send(_describe(exc))


def main():
    reply_fd, limits = int(sys.argv[-3]), sys.argv[-2]
    jail(sys.argv[-1] == "mounts")
    channel = Channel(os.dup(0), reply_fd, MAX_REQUEST)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the solution's stdin, stdout and stderr are /dev/null
        os.dup2(null, fd)
    os.set_inheritable(reply_fd, False)
    kind, code = channel.receive()
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)  # past the file-size limit a write fails, not the process
    _limits(limits)
    sys.addaudithook(_hook)
    module = type(sys)("solution")  # not __main__: a demonstration under `if __name__ == "__main__":` stays out
    module.__builtins__ = builtins
    sys.modules["solution"] = module
    program = None
    try:
        code = compile(code, "<solution>", "exec")
        if kind == "program":
            program = code
        else:
            exec(code, module.__dict__)
        channel.send(["ready"])
    except BaseException as exc:  # noqa: B902
        channel.send(_describe(exc))
        os._exit(0)
    _serve(channel, module.__dict__, program)


main()
