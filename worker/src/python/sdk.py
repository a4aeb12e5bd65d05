"""The ``warden`` module: the workflow SDK, provided by the worker itself.

Embedded in the worker binary and registered as ``sys.modules["warden"]`` once per
template (worker/src/python/sdk.rs), before any workflow runs; there is nothing to
install. Workflow code uses it as::

    from warden import context, config, kv, log

    def run(**params):
        region = config.get("region", "eu")
        token = config.get("api_token")          # a secret: asked of the supervisor
        seen = kv.get("cursor", 0)
        kv.set("cursor", seen + 1)               # buffered until the result
        log.info("processed", org=context.org.name, cursor=seen)
        context.roi.time_saved = 120             # this execution saved two minutes
        return {"ok": True}

What lives where:

- ``context``: the execution's identity and limits, sent with it (``Execute.context_json``).
- ``config.get``: the organization's config over the global one, sent with the execution
  (no database, no Redis round trip per key). Secret values are not sent: the first
  ``get`` of a secret asks the supervisor over the execution's socket.
- ``config.set/delete`` and ``kv.set/delete``: buffered in the execution, visible to its
  own later reads, and sent with its result; the supervisor applies them in the
  transaction that records the result, only if the execution ends ``success``.
- ``kv.get/list``: keys the execution did not write are asked of the supervisor (once
  per key per execution).
- ``log``: lines share the level threshold of the ``logging`` logger ``warden`` and the
  order and cap of ``print`` and ``logging`` output (the same sink, ``_warden.emit_log``).

State is per execution: ``_begin`` (before the workflow runs) and ``_finish`` (after it,
returning the buffered writes as JSON) reset it, in forked children and reuse mode
alike. The objects (``context``, ``config``, ...) stay the same, so a module that kept a
reference to one still sees the current execution.
"""

import copy
import json
import logging
import math
import time

import _warden

__all__ = ["context", "config", "kv", "log"]

# The same limits the supervisor checks again (supervisor/src/sdk/writes.rs).
MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 1024 * 1024
MAX_WRITES_BYTES = 4 * 1024 * 1024
MAX_WRITES = 10_000

_MISSING = object()
_state = None


class _State:
    """One execution's SDK state. The context is parsed on first use: a workflow that
    never touches the SDK pays nothing for it."""

    __slots__ = (
        "layers",
        "context_json",
        "params_json",
        "started",
        "parsed",
        "params",
        "writes",
        "writes_bytes",
        "kv_read",
        "secrets",
        "roi_set",
        "roi_time_saved",
        "roi_value",
    )

    def __init__(self, context_json, params_json):
        self.context_json = context_json
        self.params_json = params_json
        self.started = time.monotonic()
        self.parsed = None
        self.layers = None
        self.params = _MISSING
        # (namespace, key) -> JSON text of the value, or None for a delete. Insertion
        # order is the order keys were first written.
        self.writes = {}
        self.writes_bytes = 0
        # kv keys read from the supervisor: key -> value (or _MISSING when absent).
        self.kv_read = {}
        # (scope, key) -> plaintext of secrets already received.
        self.secrets = {}
        self.roi_set = False
        self.roi_time_saved = None
        self.roi_value = None

    def ctx(self):
        if self.parsed is None:
            try:
                parsed = json.loads(self.context_json or "{}")
            except ValueError:
                parsed = {}
            self.parsed = parsed if isinstance(parsed, dict) else {}
        return self.parsed


def _current():
    if _state is None:
        raise RuntimeError("the warden SDK is only available while a workflow runs")
    return _state


def _begin(context_json, params_json):
    """Called by the worker before the workflow runs."""
    global _state
    _state = _State(context_json, params_json)


def _finish():
    """Called by the worker after the workflow returned or raised: the buffered writes
    as the JSON array of ``ExecutionResult.sdk_writes_json`` ("" when there are none).
    Never raises; the state is cleared either way."""
    global _state
    state, _state = _state, None
    if state is None:
        return ""
    try:
        ops = []
        for (namespace, key), encoded in state.writes.items():
            key_json = json.dumps(key)
            if encoded is None:
                ops.append('{"op":"%s.delete","key":%s}' % (namespace, key_json))
            else:
                ops.append('{"op":"%s.set","key":%s,"value":%s}' % (namespace, key_json, encoded))
        if state.roi_set:
            roi = _Roi.values(state)
            ops.append(json.dumps({"op": "roi", "time_saved": roi[0], "value": roi[1]}))
        return "[" + ",".join(ops) + "]" if ops else ""
    except Exception:
        return ""


def _request(op, args):
    """Asks the supervisor; returns the decoded answer. Raises RuntimeError with the
    supervisor's reason when it refuses."""
    ask = getattr(_warden, "request", None)
    if ask is None:
        raise RuntimeError(f"this worker cannot ask the supervisor for {op!r}: it has no request channel")
    return json.loads(ask(op, json.dumps(args)))


def _check_key(key, what):
    if not isinstance(key, str):
        raise TypeError(f"{what} keys must be str, not {type(key).__name__}")
    if not key:
        raise ValueError(f"{what} keys may not be empty")
    if "\0" in key:
        raise ValueError(f"{what} keys may not contain NUL characters")
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > MAX_KEY_BYTES:
        raise ValueError(f"{what} key {key[:32]!r}... is {size} bytes long, more than the limit of {MAX_KEY_BYTES}")


# One encoder for every write: `json.dumps` with non-default options builds a new one
# per call, which costs more than encoding a small value.
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def _encode(value, key, what):
    try:
        encoded = _ENCODER.encode(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"the value of {what} key {key!r} must be JSON-serializable: {exc}") from None
    if "\\u0000" in encoded:
        raise ValueError(f"the value of {what} key {key!r} contains a NUL character, which cannot be stored")
    if len(encoded) > MAX_VALUE_BYTES:
        raise ValueError(
            f"the value of {what} key {key!r} is {len(encoded)} bytes of JSON, "
            f"more than the limit of {MAX_VALUE_BYTES}"
        )
    return encoded


def _decode(encoded):
    return json.loads(encoded)


def _fresh(value):
    """A copy the caller may change without changing what later reads return."""
    if isinstance(value, (dict, list)):
        return copy.deepcopy(value)
    return value


def _buffer(state, namespace, key, encoded):
    slot = (namespace, key)
    old = state.writes.get(slot, _MISSING)
    size = len(key) + 32 + (len(encoded) if encoded is not None else 0)
    old_size = 0 if old is _MISSING else len(key) + 32 + (len(old) if old is not None else 0)
    if old is _MISSING and len(state.writes) >= MAX_WRITES:
        raise ValueError(f"an execution may write at most {MAX_WRITES} keys")
    total = state.writes_bytes - old_size + size
    if total > MAX_WRITES_BYTES:
        raise ValueError(
            f"this execution's buffered writes would reach {total} bytes, more than the "
            f"limit of {MAX_WRITES_BYTES}"
        )
    state.writes[slot] = encoded
    state.writes_bytes = total


# --- context ----------------------------------------------------------------------


class Org:
    """The organization an execution belongs to."""

    __slots__ = ("id", "name")

    def __init__(self, id, name):
        self.id = id
        self.name = name

    def __repr__(self):
        return f"Org(id={self.id!r}, name={self.name!r})"

    def __eq__(self, other):
        return isinstance(other, Org) and (self.id, self.name) == (other.id, other.name)

    def __hash__(self):
        return hash((self.id, self.name))


class _Roi:
    """``context.roi``: what this execution is worth, counted in the daily metrics if it
    succeeds. Defaults to the workflow's values; setting either overrides them."""

    __slots__ = ()

    @staticmethod
    def values(state):
        default = state.ctx().get("roi") or {}
        time_saved = state.roi_time_saved
        value = state.roi_value
        if time_saved is None:
            time_saved = float(default.get("time_saved") or 0.0)
        if value is None:
            value = float(default.get("value") or 0.0)
        return time_saved, value

    @property
    def time_saved(self):
        """Seconds of human work this execution saves."""
        return _Roi.values(_current())[0]

    @time_saved.setter
    def time_saved(self, seconds):
        seconds = _number(seconds, "context.roi.time_saved")
        if seconds < 0:
            raise ValueError("context.roi.time_saved must be at least 0 seconds")
        state = _current()
        state.roi_time_saved = seconds
        state.roi_set = True

    @property
    def value(self):
        """What this execution is worth (in the platform's unit of value)."""
        return _Roi.values(_current())[1]

    @value.setter
    def value(self, amount):
        amount = _number(amount, "context.roi.value")
        state = _current()
        state.roi_value = amount
        state.roi_set = True

    def __repr__(self):
        if _state is None:
            return "<warden.context.roi (no execution)>"
        time_saved, value = _Roi.values(_state)
        return f"Roi(time_saved={time_saved!r}, value={value!r})"


def _number(x, what):
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"{what} must be a number, not {type(x).__name__}")
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"{what} must be a finite number")
    return x


class Context:
    """The running execution: who runs what, for whom, and how long it has left."""

    __slots__ = ("roi",)

    def __init__(self):
        self.roi = _Roi()

    @property
    def execution_id(self):
        return _current().ctx().get("execution_id")

    @property
    def workflow(self):
        """The workflow's name."""
        return _current().ctx().get("workflow")

    @property
    def workflow_id(self):
        return _current().ctx().get("workflow_id")

    @property
    def org(self):
        """``Org(id, name)``, or None for a workflow that belongs to no organization."""
        org = _current().ctx().get("org")
        if not isinstance(org, dict):
            return None
        return Org(org.get("id"), org.get("name"))

    @property
    def caller(self):
        """Who submitted the execution, when they said."""
        return _current().ctx().get("caller")

    @property
    def params(self):
        """The execution's parameters (the keyword arguments of the workflow function)."""
        state = _current()
        if state.params is _MISSING:
            try:
                state.params = json.loads(state.params_json or "{}")
            except ValueError:
                state.params = {}
        return state.params

    @property
    def attempt(self):
        """1 on the first run; more when the execution was taken up again after its
        supervisor died."""
        return _current().ctx().get("attempt", 1)

    @property
    def timeout_seconds(self):
        return _current().ctx().get("timeout_seconds")

    @property
    def deadline(self):
        """Seconds left before the execution is killed (None without a deadline)."""
        state = _current()
        timeout = state.ctx().get("timeout_seconds")
        if timeout is None:
            return None
        return max(0.0, float(timeout) - (time.monotonic() - state.started))

    @property
    def delivery_id(self):
        """The event delivery that started this execution, if one did."""
        return _current().ctx().get("delivery_id")

    def __repr__(self):
        if _state is None:
            return "<warden.context (no execution)>"
        return (
            f"Context(execution_id={self.execution_id!r}, workflow={self.workflow!r}, "
            f"org={self.org!r}, attempt={self.attempt!r})"
        )


# --- config -----------------------------------------------------------------------


def _layers(state):
    """The config layers, most specific first: ``[("org", layer), ("global", layer)]``,
    without "org" for an execution that belongs to no organization."""
    if state.layers is None:
        config = state.ctx().get("config") or {}
        out = []
        for name in ("org", "global"):
            layer = config.get(name)
            if isinstance(layer, dict):
                out.append((name, layer))
        state.layers = out
    return state.layers


class Config:
    """The organization's configuration over the global one."""

    __slots__ = ()

    def get(self, key, default=None):
        """The value of ``key``: this execution's own write if it made one, else the
        organization's value, else the global one, else ``default``. A secret is asked
        of the supervisor the first time (it raises RuntimeError if it cannot be read)."""
        _check_key(key, "config")
        state = _current()
        layers = _layers(state)
        written = state.writes.get(("config", key), _MISSING)
        if written is not _MISSING:
            if written is not None:
                return _decode(written)
            # Deleted in the write scope (the first layer): what shows through is below it.
            layers = layers[1:]
        for scope, layer in layers:
            values = layer.get("values") or {}
            if key in values:
                return _fresh(values[key])
            if key in (layer.get("secrets") or ()):
                return _secret(state, scope, key)
        return default

    def set(self, key, value):
        """Sets ``key`` in the execution's organization (global for a workflow with no
        organization) once the execution succeeds. ``value`` must be JSON-serializable."""
        _check_key(key, "config")
        state = _current()
        _refuse_secret(state, key, "set")
        _buffer(state, "config", key, _encode(value, key, "config"))

    def delete(self, key):
        """Deletes the organization's ``key`` (the global value, if any, then applies)
        once the execution succeeds."""
        _check_key(key, "config")
        state = _current()
        _refuse_secret(state, key, "delete")
        _buffer(state, "config", key, None)

    def __repr__(self):
        return "<warden.config>"


def _refuse_secret(state, key, verb):
    for _, layer in _layers(state):
        if key in (layer.get("secrets") or ()):
            raise ValueError(
                f"config key {key!r} is a secret; a workflow cannot {verb} it "
                f"(secrets are set with `warden config set --secret`)"
            )


def _secret(state, scope, key):
    slot = (scope, key)
    if slot not in state.secrets:
        answer = _request("config_secret", {"key": key, "scope": scope})
        state.secrets[slot] = answer["value"]
    return state.secrets[slot]


# --- kv ---------------------------------------------------------------------------


class KV:
    """The organization's key-value store: JSON values by string key."""

    __slots__ = ()

    def get(self, key, default=None):
        """The value of ``key`` (this execution's own write if it made one), or
        ``default`` when there is none."""
        _check_key(key, "kv")
        state = _current()
        written = state.writes.get(("kv", key), _MISSING)
        if written is not _MISSING:
            return default if written is None else _decode(written)
        value = state.kv_read.get(key, None)
        if key not in state.kv_read:
            answer = _request("kv_get", {"key": key})
            value = answer["value"] if answer.get("found") else _MISSING
            state.kv_read[key] = value
        return default if value is _MISSING else _fresh(value)

    def set(self, key, value):
        """Sets ``key`` once the execution succeeds. ``value`` must be JSON-serializable."""
        _check_key(key, "kv")
        state = _current()
        _buffer(state, "kv", key, _encode(value, key, "kv"))

    def delete(self, key):
        """Deletes ``key`` once the execution succeeds."""
        _check_key(key, "kv")
        _buffer(_current(), "kv", key, None)

    def list(self, prefix=""):
        """The keys starting with ``prefix``, sorted, as this execution sees them (its
        own writes included)."""
        if not isinstance(prefix, str):
            raise TypeError(f"kv.list prefix must be str, not {type(prefix).__name__}")
        state = _current()
        keys = set(_request("kv_list", {"prefix": prefix})["keys"])
        for (namespace, key), encoded in state.writes.items():
            if namespace == "kv" and key.startswith(prefix):
                if encoded is None:
                    keys.discard(key)
                else:
                    keys.add(key)
        return sorted(keys)

    def __repr__(self):
        return "<warden.kv>"


# --- log --------------------------------------------------------------------------

# Named like a logging logger, so `logging.getLogger("warden").setLevel(...)` (or the
# root logger's level) decides which SDK lines are kept, exactly as for `logging` calls.
_logger = logging.getLogger("warden")
_NEEDS_QUOTES = frozenset(' ="\\\n\t')


def _field(value):
    """One logfmt value: bare when unambiguous, JSON otherwise. The common types skip
    ``json.dumps`` (a microsecond or more per call, on the hot path of every line)."""
    if isinstance(value, str):
        if value and _NEEDS_QUOTES.isdisjoint(value):
            return value
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:
        return str(value)
    if type(value) is float:
        return repr(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return json.dumps(str(value), ensure_ascii=False)


def _emit(levelno, level, msg, fields):
    # The same level check `logging` makes (cached per logger), then the same sink as a
    # `logging` record: one line, in order, under the execution's cap. No LogRecord is
    # built: it would triple the cost of a line and nobody but the sink reads it.
    if not _logger.isEnabledFor(levelno):
        return
    text = msg if isinstance(msg, str) else str(msg)
    if fields:
        text += " " + " ".join([f"{k}={_field(v)}" for k, v in fields.items()])
    _warden.emit_log(level, text)


class Log:
    """Structured log lines: ``log.info("sent", to=user, n=3)`` logs ``sent to=alice n=3``.
    Same levels, order and cap as ``print`` and ``logging``; the level threshold is the
    ``warden`` logger's (``logging.getLogger("warden")``), INFO by default."""

    __slots__ = ()

    def debug(self, msg, **fields):
        _emit(logging.DEBUG, "debug", msg, fields)

    def info(self, msg, **fields):
        _emit(logging.INFO, "info", msg, fields)

    def warning(self, msg, **fields):
        _emit(logging.WARNING, "warning", msg, fields)

    def error(self, msg, **fields):
        _emit(logging.ERROR, "error", msg, fields)

    def critical(self, msg, **fields):
        _emit(logging.CRITICAL, "critical", msg, fields)

    def __repr__(self):
        return "<warden.log>"


context = Context()
config = Config()
kv = KV()
log = Log()
