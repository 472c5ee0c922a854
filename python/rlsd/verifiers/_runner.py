"""The solution's side of the code verifier, run inside the sandbox after ``_plain.py``'s source.

argv: ``REPORT_FD LIMITS`` (``NAME=VALUE`` resource limits joined by commas, e.g. ``CPU=6,NOFILE=64``).
Frames on stdin and on ``REPORT_FD`` are a decimal length, a newline and that many bytes of JSON.
The first frame on stdin is ``["module", source]`` (the runner executes it once and answers
``["ready"]``) or ``["program", source]`` (a program run once per ``run`` request; answers
``["ready"]`` at once). Then each request gets ``["value", plain]``, ``["handle", n]`` (an object
that is not plain data, kept here as number ``n``) or ``["error", message]``. Requests: ``["get",
name]`` (a global of the solution), ``["attr", n, name]``, ``["item", n, key]``, ``["call", n,
args, kwargs]``, and ``["run", stdin]``: the program's output (``sys.stdout``) for that input.

The verdict is the host's: it evaluates the tests on the plain values it receives, so nothing here
is trusted and nothing here is secret. The audit hook only keeps the promises of the sandbox: no
new processes, and native code only from the Python installation, never ctypes or the test modules.
"""

import _signal
import builtins
import io
import os
import resource
import sys

_REFUSED = frozenset({"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
                      "subprocess.Popen", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function"})
_REFUSED_MODULES = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "_xxsubinterpreters", "_xxinterpchannels",
                              "_xxtestfuzz", "_ctypes_test"})
_PREFIX = os.path.realpath(sys.base_prefix) + "/"  # native code loads from the Python installation only


def _refused_module(name):
    return name in _REFUSED_MODULES or name.startswith("_test")


def _hook(event, args):
    if event in _REFUSED:
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


class _Channel:
    def __init__(self, read_fd, write_fd):
        self.read_fd, self.write_fd = read_fd, write_fd

    def _read(self, size):
        data = b""
        while len(data) < size:
            chunk = os.read(self.read_fd, min(size - len(data), 1 << 20))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def receive(self):
        header = b""
        while not header.endswith(b"\n"):
            header += self._read(1)
        return loads(self._read(int(header)))

    def send(self, data):
        data = b"%d\n%s" % (len(data), data)
        while data:
            data = data[os.write(self.write_fd, data):]


def _describe(exc):
    try:
        return f"{type(exc).__name__}: {str(exc)[:500]}"
    except BaseException:  # noqa: B902  a message that cannot be printed
        return type(exc).__name__


def _run_program(code, stdin):
    """What ``code`` writes to ``sys.stdout`` when it reads ``stdin``; ``exit()`` and ``sys.exit(0)`` end it."""
    out = io.BytesIO()
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8")
    sys.stdout = stdout = io.TextIOWrapper(out, encoding="utf-8", errors="replace", write_through=True)
    try:
        exec(code, {"__name__": "__main__", "__builtins__": builtins, "exit": sys.exit, "quit": sys.exit})
    except SystemExit as exc:
        if exc.code not in (None, 0):
            raise
    stdout.flush()  # this wrapper, whatever the program did to sys.stdout
    return out.getvalue().decode(errors="replace")


def _serve(channel, namespace, program):
    objects, numbers = [], {}  # number -> object, and id(object) -> number (objects are kept alive)

    def answer(value):
        try:
            return dumps(["value", encode(value)])
        except NotPlain:
            if id(value) not in numbers:
                numbers[id(value)] = len(objects)
                objects.append(value)
            return dumps(["handle", numbers[id(value)]])

    while True:
        try:
            request = channel.receive()
        except EOFError:
            os._exit(0)
        try:
            op, deref = request[0], objects.__getitem__
            if op == "get":
                name = request[1]
                reply = answer(namespace[name] if name in namespace else getattr(builtins, name))
            elif op == "attr":
                reply = answer(getattr(objects[request[1]], request[2]))
            elif op == "item":
                reply = answer(objects[request[1]][decode(request[2], deref)])
            elif op == "run" and program is not None:
                reply = answer(_run_program(program, request[1]))
            elif op == "call":
                args = [decode(a, deref) for a in request[2]]
                kwargs = {k: decode(v, deref) for k, v in request[3].items()}
                reply = answer(objects[request[1]](*args, **kwargs))
            else:
                reply = dumps(["error", f"unknown request {op!r}"])
        except BaseException as exc:  # noqa: B902  whatever the solution raises is the test's failure
            reply = dumps(["error", _describe(exc)])
        channel.send(reply)


def main():
    report_fd, limits = int(sys.argv[-2]), sys.argv[-1]
    channel = _Channel(os.dup(0), report_fd)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the solution's stdin, stdout and stderr are /dev/null
        os.dup2(null, fd)
    os.set_inheritable(report_fd, False)
    kind, code = channel.receive()
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_IGN)  # past the file-size limit a write fails, not the process
    _limits(limits)
    sys.addaudithook(_hook)
    namespace, program = {"__name__": "__main__", "__builtins__": builtins}, None
    try:
        code = compile(code, "<solution>", "exec")
        if kind == "program":
            program = code
        else:
            exec(code, namespace)
        channel.send(dumps(["ready"]))
    except BaseException as exc:  # noqa: B902
        channel.send(dumps(["error", _describe(exc)]))
        os._exit(0)
    _serve(channel, namespace, program)


main()
