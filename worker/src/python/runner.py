"""Runs one workflow function inside the Warden worker.

Embedded in the worker binary and loaded once per template as the module
``_warden_runner`` (never run as a script). The Rust side calls ``execute`` in the
forked child (fork mode) or in the template itself (reuse mode): same code path for both.
Rust owns processes, sockets and limits; this file owns what only Python can do well:
compiling, calling, formatting exceptions and encoding the result.

Output capture: ``sys.stdout``/``sys.stderr`` are replaced with line-buffered writers and
the root logger gets a handler; every line becomes one ``_warden.emit_log`` call, which
writes a Log frame straight to the socket (the embedded interpreter is never finalised
and a forked child ends with ``_exit``, so nothing may sit in a buffer).
"""

import builtins
import gc
import inspect
import io
import json
import linecache
import logging
import marshal
import os
import sys
import traceback
import types
import warnings

import _warden

# The filename this module was compiled under; frames with it are the runner's own and
# are cut from the tracebacks shown to users.
_RUNNER_FILE = __file__

# A partial line longer than this is emitted without waiting for its newline, so that
# output without newlines cannot grow without bound (the Rust side truncates it anyway).
_MAX_PENDING = 64 * 1024

_WORKFLOW_MODULE = "__workflow__"


class LineWriter(io.TextIOBase):
    """A ``sys.stdout``/``sys.stderr`` replacement: one log line per complete line.

    A partial last line waits for its newline (``flush`` does not emit it, so progress
    output written with ``end=""`` does not become one line per write) and is emitted
    by ``finish`` at the end of the execution.
    """

    def __init__(self, name, level):
        super().__init__()
        self._name = name
        self._level = level
        self._pending = ""
        # Set when a partial line was emitted early for being too long: the newline
        # that eventually ends it must not produce an extra empty line.
        self._overflowed = False
        self.buffer = _ByteWriter(self)

    @property
    def name(self):
        return self._name

    @property
    def encoding(self):
        return "utf-8"

    @property
    def errors(self):
        return "strict"

    def writable(self):
        return True

    def isatty(self):
        return False

    def fileno(self):
        raise io.UnsupportedOperation(f"{self._name} is captured and has no file descriptor")

    def close(self):
        # Closing the captured stream would only break later prints in this execution.
        pass

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if not s:
            return 0
        if "\n" not in s:
            self._pending += s
            self._overflowed = False
        else:
            lines = (self._pending + s).split("\n")
            if self._overflowed and lines[0] == "":
                # This newline ends a line whose text was already emitted.
                del lines[0]
            self._overflowed = False
            self._pending = lines.pop()
            for line in lines:
                _warden.emit_log(self._level, line)
        if len(self._pending) >= _MAX_PENDING:
            self.finish()
            self._overflowed = True
        return len(s)

    def flush(self):
        pass

    def reset(self):
        self._pending = ""
        self._overflowed = False

    def finish(self):
        if self._pending:
            line, self._pending = self._pending, ""
            _warden.emit_log(self._level, line)


class _ByteWriter:
    """``sys.stdout.buffer`` for code that writes bytes: decoded as UTF-8 (invalid
    bytes replaced) and passed to the text writer."""

    def __init__(self, text):
        self._text = text

    def write(self, b):
        data = bytes(b)
        self._text.write(data.decode("utf-8", "replace"))
        return len(data)

    def writable(self):
        return True

    def flush(self):
        pass


def _level_name(levelno):
    if levelno >= logging.CRITICAL:
        return "critical"
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


class LogHandler(logging.Handler):
    """Root-logger handler: one log line per record, with the record's level. The
    default formatter gives the message plus the exception text when ``exc_info`` is set."""

    def emit(self, record):
        try:
            _warden.emit_log(_level_name(record.levelno), self.format(record))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


_stdout = LineWriter("<stdout>", "info")
_stderr = LineWriter("<stderr>", "error")
_handler = LogHandler()


def install_capture():
    """Points the standard streams (including the ``__std*__`` originals, which would
    otherwise buffer into the void) and the root logger at the capture. Called at
    start-up, and again after each reuse-mode execution in case the code replaced them."""
    sys.stdout = sys.__stdout__ = _stdout
    sys.stderr = sys.__stderr__ = _stderr
    root = logging.getLogger()
    for h in list(root.handlers):
        if h is not _handler:
            root.removeHandler(h)
    if _handler not in root.handlers:
        root.addHandler(_handler)
    root.setLevel(logging.INFO)
    # `warnings` go through logging ("py.warnings", WARNING) rather than raw stderr.
    logging.captureWarnings(True)


def begin_output():
    _stdout.reset()
    _stderr.reset()


def finish_output():
    """Emits partial last lines; called before the Result is written."""
    for w in (_stdout, _stderr):
        try:
            w.finish()
        except Exception:
            pass


def execute(path, source, function, params_json, max_result_bytes, code=None):
    """Runs ``function`` from ``source`` (already compiled: ``code``, if given) with the
    JSON-object ``params_json`` as keyword arguments. Never raises: returns
    ``(True, result_json)`` or ``(False, error_type, message, traceback)``."""
    # Register the source so tracebacks show the workflow's lines (mtime None: never
    # checked against the file system, where the path does not exist).
    linecache.cache[path] = (len(source), None, source.splitlines(True), path)
    try:
        return _execute(path, source, function, params_json, max_result_bytes, code)
    finally:
        linecache.cache.pop(path, None)


def compile_code(path, source):
    """A fork-mode child asked for its code (``Code::Wanted``), before running any of
    it: ``(code, marshal.dumps(code))``, or ``(None, b"")`` when the code is not worth
    handing down (it does not compile, or its compilation warns: every execution must
    show those warnings in its own logs). ``execute`` then compiles it itself."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            code = compile(source, path, "exec", dont_inherit=True)
    except BaseException:
        return (None, b"")
    if caught:
        return (None, b"")
    return (code, marshal.dumps(code))


def load_code(data):
    """The code an earlier child of the same organization compiled (``Code::Cached``),
    or None if it cannot be loaded (then ``execute`` compiles the source)."""
    try:
        code = marshal.loads(data)
    except Exception:
        return None
    return code if isinstance(code, types.CodeType) else None


# Compiled workflows by (path, source), in reuse mode: compiling even a two-line function
# costs more than running it, and a reuse template runs one organization's workflows.
# Code objects are immutable and every execution still gets a fresh module namespace.
# Bounded: the oldest entry goes first. A fork-mode child fills its own copy, which dies
# with it: a fork-mode template never compiles an execution's source, since every later
# child, whatever organization it runs for, would inherit the code (its constants, the
# source as the cache key) in its memory.
_CODE_CACHE = {}
_CODE_CACHE_MAX = 64


def _compile(path, source):
    """The code of ``source``, from the cache or compiled (and cached). A source whose
    compilation warns (a ``SyntaxWarning``, say) is not cached: every execution of it
    compiles it again and so shows its warnings in its own logs."""
    key = (path, source)
    code = _CODE_CACHE.get(key)
    if code is not None:
        return code
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = compile(source, path, "exec", dont_inherit=True)
    if caught:
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return code
    if len(_CODE_CACHE) >= _CODE_CACHE_MAX:
        del _CODE_CACHE[next(iter(_CODE_CACHE))]
    _CODE_CACHE[key] = code
    return code


def _execute(path, source, function, params_json, max_result_bytes, code):
    try:
        if code is None:
            code = _compile(path, source)
    except SyntaxError as exc:
        # SyntaxError's own str() shows only the file's basename; name the whole path.
        message = f"{exc.msg} ({exc.filename or path}, line {exc.lineno})"
        detail = "".join(traceback.format_exception_only(type(exc), exc))
        return (False, type(exc).__name__, message, detail)
    except BaseException as exc:  # e.g. ValueError: source contains null bytes
        return _failed(exc, path)

    module = types.ModuleType(_WORKFLOW_MODULE)
    namespace = module.__dict__
    namespace["__file__"] = path
    namespace["__builtins__"] = builtins
    # Registered so that pickling, dataclasses and typing can find the module by name.
    sys.modules[_WORKFLOW_MODULE] = module
    try:
        exec(code, namespace)
    except BaseException as exc:
        return _failed(exc, path)

    fn = namespace.get(function)
    if fn is None or not callable(fn):
        return (False, "FunctionNotFound", _not_found(path, function, namespace), "")

    try:
        params = json.loads(params_json)
    except ValueError as exc:
        return (False, "InvalidParams", f"params are not valid JSON: {exc}", "")
    if not isinstance(params, dict):
        return (
            False,
            "InvalidParams",
            f"params must be a JSON object (its keys become keyword arguments of "
            f"{function}()), got a JSON {_json_kind(params)}",
            "",
        )

    try:
        if inspect.iscoroutinefunction(fn):
            value = _run_async(fn(**params))
        else:
            value = fn(**params)
            if inspect.isawaitable(value):
                value = _run_async(value)
    except BaseException as exc:
        # BaseException too: SystemExit, KeyboardInterrupt and GeneratorExit are results
        # of the user's code, never a reason for the worker to stop silently.
        return _failed(exc, path)

    try:
        result_json = json.dumps(value, allow_nan=False)
    except Exception as exc:
        return (
            False,
            "ResultNotSerializable",
            f"the return value of {function}() is not JSON-serializable: {_safe_str(exc)}",
            "",
        )
    if max_result_bytes and len(result_json) > max_result_bytes:
        # json.dumps escapes non-ASCII by default, so characters are bytes here.
        return (
            False,
            "ResultTooLarge",
            f"the return value of {function}() is {len(result_json)} bytes of JSON, "
            f"more than the limit of {max_result_bytes} bytes",
            "",
        )
    return (True, result_json)


def _run_async(awaitable):
    import asyncio  # lazily: importing it costs ~25 ms, most workflows never need it

    if not inspect.iscoroutine(awaitable):
        awaitable = _await(awaitable)
    return asyncio.run(awaitable)


async def _await(awaitable):
    return await awaitable


def _failed(exc, path):
    return (False, _type_name(type(exc)), _message(exc), _format_traceback(exc, path))


def _message(exc):
    """``str(exc)``, except that a SyntaxError (say, in a workspace module the workflow
    imports) names its whole path, not only the file's basename as its ``str`` does."""
    if isinstance(exc, SyntaxError) and exc.filename:
        try:
            return f"{exc.msg} ({exc.filename}, line {exc.lineno})"
        except BaseException:
            pass
    return _safe_str(exc)


def _format_traceback(exc, path):
    """The traceback starting at the first frame of the workflow's file: the runner's own
    frames (and, for async functions, asyncio's) say nothing to the user. When no frame
    is the workflow's (e.g. a TypeError binding the arguments) only the runner's frames
    are cut."""
    tb = exc.__traceback__
    start = tb
    while start is not None and start.tb_frame.f_code.co_filename != path:
        start = start.tb_next
    if start is None:
        start = tb
        while start is not None and start.tb_frame.f_code.co_filename == _RUNNER_FILE:
            start = start.tb_next
    try:
        return "".join(traceback.format_exception(type(exc), exc, start))
    except BaseException:
        return f"{_type_name(type(exc))}: {_safe_str(exc)}\n"


def _type_name(cls):
    """Builtins by name (``ValueError``); others qualified by module
    (``json.decoder.JSONDecodeError``). Classes the workflow defines itself are shown
    by name: their module, ``__workflow__``, is an internal name."""
    name = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", "Exception")
    module = getattr(cls, "__module__", None)
    if module in (None, "builtins", _WORKFLOW_MODULE):
        return name
    return f"{module}.{name}"


def _safe_str(exc):
    try:
        return str(exc)
    except BaseException:
        return f"<unprintable {type(exc).__name__}>"


def _not_found(path, function, namespace):
    defined = [
        name
        for name, value in namespace.items()
        if inspect.isfunction(value) and value.__module__ == _WORKFLOW_MODULE
    ]
    listing = f"functions defined: {', '.join(defined)}" if defined else "no functions defined"
    value = namespace.get(function)
    if value is not None:
        return (
            f"{path} defines no function {function!r} ({function!r} is a "
            f"{type(value).__name__}; {listing})"
        )
    return f"{path} defines no function {function!r} ({listing})"


def _json_kind(value):
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


# --- reuse mode -------------------------------------------------------------------

def _library_dirs():
    import sysconfig

    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            dirs.add(sysconfig.get_path(key))
        except Exception:
            pass
    return tuple(os.path.join(d, "") for d in dirs if d)


_LIBRARY_DIRS = None


def _is_library(module):
    """Is this module part of the interpreter or its installed packages? Those are kept
    when a reuse-mode execution ends: they hold no workflow state worth discarding, and
    some C extensions (numpy, for one) cannot be initialised twice in a process.
    Workspace modules (served by the module cache's finder) never are: the next
    execution may run under a newer generation of them."""
    global _LIBRARY_DIRS
    if isinstance(getattr(module, "__loader__", None), _warden.WorkspaceFinder):
        return False
    spec = getattr(module, "__spec__", None)
    origin = getattr(spec, "origin", None) if spec is not None else None
    if origin in ("built-in", "frozen"):
        return True
    if not isinstance(origin, str):
        return False
    if _LIBRARY_DIRS is None:
        _LIBRARY_DIRS = _library_dirs()
    return origin.startswith(_LIBRARY_DIRS)


def snapshot():
    """State a reuse-mode execution may change and must not leak to the next one."""
    return (set(sys.modules), list(sys.path))


def restore(state):
    """Undoes what ``snapshot`` recorded: drops the workflow's own modules (and any
    other module it imported from outside the interpreter's library directories), puts
    ``sys.path`` back, and reinstalls the output capture."""
    modules_before, path_before = state
    for name in list(sys.modules):
        if name in modules_before:
            continue
        module = sys.modules.get(name)
        if name == _WORKFLOW_MODULE or not _is_library(module):
            sys.modules.pop(name, None)
    sys.path[:] = path_before
    install_capture()


def _fix_interpreter_paths():
    """When embedded, ``sys.executable`` is the worker binary: point it at the real
    interpreter so ``subprocess.run([sys.executable, ...])`` and multiprocessing work."""
    candidate = os.path.join(
        sys.base_prefix, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}"
    )
    if os.path.exists(candidate):
        sys.executable = candidate
    if not getattr(sys, "argv", None):
        sys.argv = [""]


def _install_packages():
    """The workspace's package set (``WARDEN_PACKAGES``, a directory the supervisor
    installed with pip, read-only to workers) goes on ``sys.path`` just before the host's
    site-packages: the standard library wins over a package of the same name, the set
    wins over whatever the host happens to have installed. Workspace modules come first
    of all (their finder is ``sys.meta_path[0]``). The directory also counts as a library
    directory in reuse mode, so packages are kept loaded between executions. Then the
    packages named by ``WARDEN_PRELOAD`` are imported once, here in the template, so
    forked children inherit them; one that fails to import is reported on stderr (the
    supervisor's log) and skipped."""
    global _LIBRARY_DIRS
    packages = os.environ.pop("WARDEN_PACKAGES", "")
    preload = os.environ.pop("WARDEN_PRELOAD", "")
    if packages:
        at = next(
            (i for i, p in enumerate(sys.path) if p.endswith(("site-packages", "dist-packages"))),
            len(sys.path),
        )
        sys.path.insert(at, packages)
        _LIBRARY_DIRS = _library_dirs() + (os.path.join(packages, ""),)
    for name in filter(None, (n.strip() for n in preload.split(","))):
        try:
            __import__(name)
        except BaseException as exc:  # noqa: BLE001 - a bad package must not stop the template
            print(f"warden: --preload {name}: {type(exc).__name__}: {exc}", file=sys.stderr)


_fix_interpreter_paths()
_install_packages()
install_capture()

# Everything loaded so far lives as long as the template. Moving it to the collector's
# permanent generation keeps a forked child's garbage collections from walking (and so
# copy-on-write faulting) every object the template owns.
gc.freeze()
