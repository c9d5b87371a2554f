"""Weir's guest SDK for Python: a transform is a decorated function.

A plugin is a module (``app.py``) that decorates one function::

    import weir

    @weir.flat_map
    def split_words(record, out):
        for word in record.value.split():
            out.emit_keyed(word, word)

and ``weir plugin build DIR`` turns it into a component (with
componentize-py, over the same WIT contract as Rust plugins). The host calls
the plugin once per chunk of a partition with the records as flat buffers;
the SDK hands them to the function one record at a time, or, with the batch
API (``@weir.batch``), as the buffers themselves, so that a plugin can use
``bytes.split`` and friends over a whole chunk.

Decorators (one per plugin), each with optional ``name=`` and ``version=``
(the plugin's metadata; by default the function's name and ``0.1.0``):

- ``@weir.map``: ``f(record)`` returns the new value (bytes or str), a
  ``(key, value)`` pair, or a ``(key, value, timestamp)`` triple; the record
  keeps its timestamp unless given (and its key when only a value is
  returned).
- ``@weir.flat_map``: ``f(record, out)`` emits zero or more records on ``out``
  (an :class:`Emitter`; records emitted with ``emit`` and ``emit_keyed`` take
  the input record's timestamp).
- ``@weir.filter``: ``f(record)`` returns whether to keep the record (the host
  keeps it as it is, without a copy).
- ``@weir.filter_map``: ``f(record)`` returns ``None`` to drop the record, else
  what ``map`` returns.
- ``@weir.map_partitions``: ``f(records, out)`` sees the chunk's records (a
  list of :class:`Record`) at once.
- ``@weir.batch(kind)``: ``f(batch, out)`` sees the chunk as a
  :class:`BatchView` (``data`` bytes and ``ends`` offsets); ``kind`` is the
  operator the plugin implements (``"flat-map"``, ``"map"``,
  ``"filter-map"`` or ``"map-partitions"``). ``out.emit_many(values)``
  takes a few Python steps per record, ``out.emit_split(data, b" ")`` none
  (the host cuts the bytes into records).
- ``@weir.reduce``: ``f(values)`` combines a key's values (a list of bytes)
  into one (bytes or str), for ``reduce-by-key`` and reducing windows; it
  must be associative and commutative.
- ``@weir.update_state``: ``f(key, values, state, out)`` gets a key's new
  values of the batch (a list of bytes; empty when the key timed out) and
  its state (any JSON value, ``None`` at first), emits on ``out`` (by default
  with the latest timestamp of the values) and returns the new state, or
  ``None`` to remove it.
- ``@weir.map_with_state``: ``f(event, state, out)`` is called once per
  record of a key, in arrival order, with the key's :class:`State` (its
  ``value``, any JSON value, ``None`` when absent, to read, set or change in
  place), and once more when the key timed out (``event.timed_out``; the
  state is removed afterwards); ``event`` is a :class:`StateEvent`. Records
  emitted take the event's timestamp (the batch time for a timeout).
- ``@weir.transform_with``: ``f(left, right, out)`` sees one partition of
  both inputs of a ``transform-with`` stage at once (two lists of
  :class:`Record`); records emitted take the latest timestamp of both.

Errors: in the per-record decorators an exception raised for a record fails
that record, with the Python traceback as the message (the stage's
``on-error`` policy decides what happens; in ``map_with_state``, the
record the function was called for, or the key when it timed out); in
``map_partitions``, ``transform_with``, the batch API and for
:class:`BatchError` it fails the whole chunk. ``@weir.init`` marks an
optional function called once per instance with the stage's ``config`` as a
``dict``; raising there stops the pipeline before it starts, with the
message. ``weir.log`` writes to the host's log.
"""

import json as _json
import traceback as _traceback
from array import array as _array

from componentize_py_types import Err as _Err
from wit_world import exports as _exports
from wit_world.imports import log as _log
from wit_world.imports import types as _types

__all__ = [
    "BatchError",
    "BatchView",
    "Emitter",
    "Record",
    "batch",
    "config",
    "filter_map",
    "flat_map",
    "init",
    "log",
    "map_partitions",
    "map_with_state",
    "reduce",
    "State",
    "StateEvent",
    "transform_with",
    "update_state",
]

#: The version of this SDK (the Weir release it ships with).
SDK_VERSION = "0.1.0"

_KINDS = {
    "map": _types.PluginKind.MAP,
    "flat-map": _types.PluginKind.FLAT_MAP,
    "filter": _types.PluginKind.FILTER,
    "filter-map": _types.PluginKind.FILTER_MAP,
    "map-partitions": _types.PluginKind.MAP_PARTITIONS,
    "reducer": _types.PluginKind.REDUCER,
    "update-state": _types.PluginKind.UPDATE_STATE,
    "map-with-state": _types.PluginKind.MAP_WITH_STATE,
    "transform-with": _types.PluginKind.TRANSFORM_WITH,
}

_plugin = None
_init = None
_config = {}


class BatchError(Exception):
    """Fails the whole chunk (not one record) with this message."""


class Record:
    """One input record: ``key`` (bytes or ``None``), ``value`` (bytes) and
    ``timestamp`` (milliseconds since the Unix epoch)."""

    __slots__ = ("key", "value", "timestamp")

    def __init__(self, key, value, timestamp):
        self.key = key
        self.value = value
        self.timestamp = timestamp

    def __repr__(self):
        return f"Record(key={self.key!r}, value={self.value!r}, timestamp={self.timestamp})"


class State:
    """The state of one key in ``map_with_state``: ``value`` is any JSON
    value, ``None`` when the key has none. Set it, or change it in place;
    what it holds after the key's last call is kept for the next batch
    (``None``: removed)."""

    __slots__ = ("value",)

    def __init__(self, value=None):
        self.value = value

    @property
    def exists(self):
        """Whether the key has a state."""
        return self.value is not None

    def remove(self):
        """Removes the key's state; returns the value it had."""
        value, self.value = self.value, None
        return value

    def __repr__(self):
        return f"State({self.value!r})"


class StateEvent:
    """What a ``map_with_state`` function is called for: a new record of a
    key (``value`` and ``timestamp`` set), or the key's timeout
    (``timed_out``; ``value`` is ``None`` and ``timestamp`` the batch's
    time). This is the key's last call then: its state is removed
    afterwards, whatever the function sets."""

    __slots__ = ("key", "value", "timestamp", "timed_out")

    def __init__(self, key, value, timestamp, timed_out=False):
        self.key = key
        self.value = value
        self.timestamp = timestamp
        self.timed_out = timed_out

    def __repr__(self):
        if self.timed_out:
            return f"StateEvent(key={self.key!r}, timed out at {self.timestamp})"
        return f"StateEvent(key={self.key!r}, value={self.value!r}, timestamp={self.timestamp})"


class BatchView:
    """A chunk of records in the host's flat layout: record ``i`` has its key
    at ``data[start:ends[2i]]`` where ``start`` is ``ends[2i-1]`` (0 for
    ``i = 0``), present when bit 0 of ``flags[i]`` is set, and its value at
    ``data[ends[2i]:ends[2i+1]]``; ``timestamps[i]`` is its time.

    ``data`` and ``flags`` are ``bytes``; ``ends`` and ``timestamps`` are
    sequences of ``int`` (in a transform, ``memoryview`` s straight over the
    bytes the host sent: index and slice them, or ``list()`` them)."""

    __slots__ = ("data", "ends", "timestamps", "flags")

    def __init__(self, data, ends, timestamps, flags):
        self.data = data
        self.ends = ends
        self.timestamps = timestamps
        self.flags = flags

    def __len__(self):
        return len(self.timestamps)

    def value(self, i):
        """The value of record ``i``."""
        return self.data[self.ends[2 * i] : self.ends[2 * i + 1]]

    def key(self, i):
        """The key of record ``i``, or ``None``."""
        if not self.flags[i] & 1:
            return None
        start = self.ends[2 * i - 1] if i else 0
        return self.data[start : self.ends[2 * i]]

    def values(self):
        """Every record's value, in order."""
        data, ends = self.data, self.ends
        return [data[ends[j] : ends[j + 1]] for j in range(0, len(ends), 2)]

    def records(self):
        """Every record as a :class:`Record`, in order."""
        return [Record(self.key(i), self.value(i), self.timestamps[i]) for i in range(len(self))]


def _bytes(value):
    """``value`` as bytes: bytes-like values as they are, ``str`` as UTF-8."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"a record's key and value are bytes or str, not {type(value).__name__}")


class Emitter:
    """Collects output records straight into the flat layout the host reads.

    ``emit`` and ``emit_keyed`` give a record the *default timestamp*: the
    input record's (in ``map_partitions`` and the batch API, the latest of
    the chunk's; in ``update_state``, the latest of the key's new values),
    unless set with ``timestamp``.
    """

    __slots__ = ("_parts", "_ends", "_timestamps", "_flags", "_at", "_pending", "timestamp")

    def __init__(self, timestamp=0):
        self._parts = []
        self._ends = []
        self._timestamps = []
        self._flags = bytearray()
        self._at = 0
        # What ``emit_split`` gathered and has not laid out yet:
        # (separator, keyed, texts, timestamps), or None.
        self._pending = None
        #: The timestamp ``emit`` and ``emit_keyed`` give to new records.
        self.timestamp = timestamp

    def __len__(self):
        count = len(self._timestamps)
        if self._pending is not None:
            separator, _, texts, _ = self._pending
            count += sum(text.count(separator) + 1 for text in texts)
        return count

    def emit(self, value):
        """Emits a record without a key."""
        self.emit_record(None, value, self.timestamp)

    def emit_keyed(self, key, value):
        """Emits a record with ``key``."""
        self.emit_record(key, value, self.timestamp)

    def emit_record(self, key, value, timestamp):
        """Emits a record with every field given (``key`` may be ``None``)."""
        if self._pending is not None:
            self._settle()
        at = self._at
        if key is None:
            self._ends.append(at)
            self._flags.append(0)
        else:
            key = _bytes(key)
            self._parts.append(key)
            at += len(key)
            self._ends.append(at)
            self._flags.append(1)
        value = _bytes(value)
        self._parts.append(value)
        at += len(value)
        self._ends.append(at)
        self._timestamps.append(timestamp)
        self._at = at

    def emit_many(self, values, *, keyed=False, timestamp=None):
        """Emits one record per value of ``values`` (bytes), each keyed by
        itself when ``keyed``, all with ``timestamp`` (default: the default
        timestamp). The batch API's fast path for records of any shape: a
        few Python steps per value (see :meth:`emit_split` for none)."""
        if self._pending is not None:
            self._settle()
        if timestamp is None:
            timestamp = self.timestamp
        parts, ends, at = self._parts, self._ends, self._at
        count = 0
        if keyed:
            for value in values:
                if type(value) is not bytes:
                    value = _bytes(value)
                n = len(value)
                parts.append(value)
                parts.append(value)
                ends.append(at + n)
                at += 2 * n
                ends.append(at)
                count += 1
            self._flags.extend(b"\x01" * count)
        else:
            for value in values:
                if type(value) is not bytes:
                    value = _bytes(value)
                parts.append(value)
                ends.append(at)
                at += len(value)
                ends.append(at)
                count += 1
            self._flags.extend(bytes(count))
        self._timestamps.extend([timestamp] * count)
        self._at = at

    def emit_split(self, data, separator=b"\n", *, keyed=False, timestamp=None):
        """Emits one record per piece of ``data`` (bytes) cut at
        ``separator`` (one byte): what
        ``emit_many(data.split(separator), keyed=..., timestamp=...)`` emits,
        without a Python step per record -- the host cuts the bytes. The fast
        path for many small records: a word count joins a line's words with
        a space and emits the line. An empty piece is an empty record
        (``b"".split(b" ")`` is ``[b""]``).

        Successive calls with the same ``separator`` and ``keyed`` are
        gathered; any other emit in the same call lays out what was gathered
        as records first, at the cost of those steps."""
        data = _bytes(data)
        separator = _bytes(separator)
        if len(separator) != 1:
            raise ValueError(f"emit_split's separator is one byte, not {separator!r}")
        if timestamp is None:
            timestamp = self.timestamp
        pending = self._pending
        if not self._timestamps and (pending is None or pending[:2] == (separator, keyed)):
            if pending is None:
                self._pending = (separator, keyed, [data], [timestamp])
            else:
                pending[2].append(data)
                pending[3].append(timestamp)
        else:
            self.emit_many(data.split(separator), keyed=keyed, timestamp=timestamp)

    def _settle(self):
        """Lays out what ``emit_split`` gathered as records (the slow path)."""
        separator, keyed, texts, timestamps = self._pending
        self._pending = None
        for text, timestamp in zip(texts, timestamps):
            self.emit_many(text.split(separator), keyed=keyed, timestamp=timestamp)

    def _batch(self):
        if self._pending is not None:
            self._settle()
        return _types.Batch(
            data=b"".join(self._parts),
            ends=self._ends,
            timestamps=self._timestamps,
            flags=bytes(self._flags),
        )

    def _packed_output(self):
        if self._pending is None:
            return _packed.PackedOutput_Records(self._packed())
        separator, keyed, texts, timestamps = self._pending
        parts, run_ends, at = [], [], 0
        for text in texts:
            parts.append(text)
            parts.append(separator)
            at += len(text) + 1
            run_ends.append(at)
        return _packed.PackedOutput_Split(
            _packed.SplitRecords(
                data=b"".join(parts),
                delimiter=separator[0],
                keyed=keyed,
                run_ends=_array("I", run_ends).tobytes(),
                run_timestamps=_array("q", timestamps).tobytes(),
            )
        )

    def _packed(self):
        # The numbers leave as two byte strings (one copy each), not as
        # lists the bindings would convert an element at a time.
        return _packed.PackedBatch(
            data=b"".join(self._parts),
            ends=_array("I", self._ends).tobytes(),
            timestamps=_array("q", self._timestamps).tobytes(),
            flags=bytes(self._flags),
        )


def _failure(index, error):
    message = "".join(_traceback.format_exception(error)).rstrip()
    return _Err(_types.ProcessError_Record(_types.RecordFailure(index=index, message=message)))


def _batch_failure(error):
    if isinstance(error, BatchError):
        message = str(error)
    else:
        message = "".join(_traceback.format_exception(error)).rstrip()
    return _Err(_types.ProcessError_Batch(message))


def _output(out):
    """``out``'s batch; what cannot be one fails the chunk."""
    try:
        return out._batch()
    except Exception as error:
        raise _batch_failure(error)


class _Keep:
    """A filter's answer: the indices of the records to keep."""

    __slots__ = ("indices",)

    def __init__(self, indices):
        self.indices = indices


def _packed_output(result):
    """A transform's result (an :class:`Emitter` or a :class:`_Keep`) as the
    ``packed-transform`` export returns it; what cannot be packed fails the
    chunk."""
    try:
        if isinstance(result, _Keep):
            return _packed.PackedOutput_Keep(_array("I", result.indices).tobytes())
        return result._packed_output()
    except Exception as error:
        raise _batch_failure(error)


def _mapped(record, result, out):
    if isinstance(result, tuple):
        if len(result) == 3:
            key, value, timestamp = result
        else:
            (key, value), timestamp = result, record.timestamp
        out.emit_record(key, value, timestamp)
    else:
        out.emit_record(record.key, result, record.timestamp)


def _per_record(function, kind):
    def process(view):
        out = Emitter()
        keep = []
        for i in range(len(view)):
            record = Record(view.key(i), view.value(i), view.timestamps[i])
            try:
                if kind == "flat-map":
                    out.timestamp = record.timestamp
                    function(record, out)
                elif kind == "filter":
                    if function(record):
                        keep.append(i)
                else:
                    result = function(record)
                    if result is not None or kind == "map":
                        _mapped(record, result, out)
            except BatchError as error:
                raise _batch_failure(error)
            except Exception as error:
                raise _failure(i, error)
        if kind == "filter":
            return _Keep(keep)
        return out

    return process


def _whole(function, as_view):
    def process(view):
        out = Emitter(max(view.timestamps, default=0))
        try:
            function(view if as_view else view.records(), out)
        except Exception as error:
            raise _batch_failure(error)
        return out

    return process


def _register(kind, process, function, name, version):
    global _plugin
    if _plugin is not None:
        raise RuntimeError(f"a plugin has one transform: {function.__name__} is the second")
    _plugin = (kind, process, name or function.__name__.replace("_", "-"), version)
    return function


def _decorator(kind, make):
    def decorate(function=None, *, name=None, version="0.1.0"):
        def register(function):
            return _register(kind, make(function), function, name, version)

        return register(function) if function is not None else register

    return decorate


map = _decorator("map", lambda f: _per_record(f, "map"))
flat_map = _decorator("flat-map", lambda f: _per_record(f, "flat-map"))
filter = _decorator("filter", lambda f: _per_record(f, "filter"))
filter_map = _decorator("filter-map", lambda f: _per_record(f, "filter-map"))
map_partitions = _decorator("map-partitions", lambda f: _whole(f, as_view=False))


reduce = _decorator("reducer", lambda f: f)
update_state = _decorator("update-state", lambda f: f)
map_with_state = _decorator("map-with-state", lambda f: f)
transform_with = _decorator("transform-with", lambda f: f)


def batch(kind, *, name=None, version="0.1.0"):
    """The batch API: ``f(batch, out)`` with a :class:`BatchView` of the chunk."""
    if kind not in ("flat-map", "map", "filter-map", "map-partitions"):
        raise ValueError(f"batch kind {kind!r}: one of flat-map, map, filter-map, map-partitions")

    def register(function):
        return _register(kind, _whole(function, as_view=True), function, name, version)

    return register


def init(function):
    """Marks ``function(config)`` to run once per instance before any chunk."""
    global _init
    _init = function
    return function


def config():
    """The stage's ``config`` table, as a ``dict`` of strings."""
    return dict(_config)


class log:
    """Writes to the host's log, tagged with pipeline, stage and partition."""

    @staticmethod
    def trace(message):
        _log.write(_log.Level.TRACE, str(message))

    @staticmethod
    def debug(message):
        _log.write(_log.Level.DEBUG, str(message))

    @staticmethod
    def info(message):
        _log.write(_log.Level.INFO, str(message))

    @staticmethod
    def warn(message):
        _log.write(_log.Level.WARN, str(message))

    @staticmethod
    def error(message):
        _log.write(_log.Level.ERROR, str(message))


def _registered():
    if _plugin is None:
        raise RuntimeError("the plugin module decorates no function with @weir.map, @weir.flat_map, ...")
    return _plugin


class Lifecycle(_exports.Lifecycle):
    """The `lifecycle` export, answered from the decorated function."""

    def describe(self):
        kind, _, name, version = _registered()
        return _types.PluginInfo(
            name=name,
            version=version,
            kind=_KINDS[kind],
            sdk_version=SDK_VERSION,
            state_version=1,
        )

    def init(self, config):
        global _config
        _config = dict(config)
        if _init is not None:
            try:
                _init(dict(_config))
            except Exception as error:
                raise _Err("".join(_traceback.format_exception(error)).rstrip())


def _split(values, start, end):
    """Values ``start..end`` of a WIT ``values`` (flat data and end offsets)."""
    data, ends = values.data, values.ends
    return [data[(ends[j - 1] if j else 0) : ends[j]] for j in range(start, end)]


def _flat(parts):
    """A WIT ``values`` of ``parts`` (bytes)."""
    ends, at = [], 0
    for part in parts:
        at += len(part)
        ends.append(at)
    return _types.Values(data=b"".join(parts), ends=ends)


# Each world's bindings have only that world's exports: a class is defined
# only where its interface is.
if hasattr(_exports, "PackedTransform"):
    from wit_world.exports import packed_transform as _packed

    class PackedTransform(_exports.PackedTransform):
        """The `packed-transform` export: one call per chunk of a partition,
        its numbers packed into bytes both ways (componentize-py converts a
        list of numbers an element at a time, bytes in one copy)."""

        def process(self, input):
            _, process, _, _ = _registered()
            view = BatchView(
                input.data,
                memoryview(input.ends).cast("I"),
                memoryview(input.timestamps).cast("q"),
                input.flags,
            )
            return _packed_output(process(view))


if hasattr(_exports, "Reducer"):

    class Reducer(_exports.Reducer):
        """The `reducer` export: one value per group of values."""

        def reduce(self, values, group_ends):
            _, function, _, _ = _registered()
            results, start = [], 0
            for end in group_ends:
                try:
                    results.append(_bytes(function(_split(values, start, end))))
                except BatchError as error:
                    raise _batch_failure(error)
                except Exception as error:
                    raise _failure(start, error)
                start = end
            return _flat(results)


def _state_bytes(value):
    return _json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _map_with_state(function, groups):
    """``map_with_state``: per key, its records one at a time, then its
    timeout, threading the key's :class:`State`."""
    out = Emitter()
    states, flags, start = [], bytearray(), 0
    for g, end in enumerate(groups.group_ends):
        key = _split(groups.keys, g, g + 1)[0]
        group_flags = groups.group_flags[g]
        state = State(_json.loads(_split(groups.states, g, g + 1)[0]) if group_flags & 1 else None)
        for index, value in enumerate(_split(groups.values, start, end), start):
            timestamp = groups.timestamps[index]
            out.timestamp = timestamp
            try:
                function(StateEvent(key, value, timestamp), state, out)
            except BatchError as error:
                raise _batch_failure(error)
            except Exception as error:
                raise _failure(index, error)
        if group_flags & 2:
            out.timestamp = groups.batch_time
            try:
                function(StateEvent(key, None, groups.batch_time, timed_out=True), state, out)
            except BatchError as error:
                raise _batch_failure(error)
            except Exception as error:
                message = "".join(_traceback.format_exception(error)).rstrip()
                name = _json.dumps(key.decode("utf-8", "replace"), ensure_ascii=False)
                raise _Err(_types.ProcessError_Batch(f"key {name} (timed out): {message}"))
            states.append(b"")
            flags.append(0)
        elif state.value is None:
            states.append(b"")
            flags.append(0)
        else:
            try:
                states.append(_state_bytes(state.value))
            except Exception as error:
                raise _batch_failure(error)
            flags.append(1)
        start = end
    return _types.StateUpdate(states=_flat(states), state_flags=bytes(flags), output=_output(out))


if hasattr(_exports, "KeyedState"):

    class KeyedState(_exports.KeyedState):
        """The `keyed-state` export (update-state, map-with-state): every
        key of a partition with its new values and state."""

        def update(self, groups):
            kind, function, _, _ = _registered()
            if kind == "map-with-state":
                return _map_with_state(function, groups)
            out = Emitter()
            states, flags, start = [], bytearray(), 0
            for g, end in enumerate(groups.group_ends):
                key = _split(groups.keys, g, g + 1)[0]
                values = _split(groups.values, start, end)
                group_flags = groups.group_flags[g]
                state = None
                if group_flags & 1:
                    state = _json.loads(_split(groups.states, g, g + 1)[0])
                times = groups.timestamps[start:end]
                out.timestamp = max(times) if times else groups.batch_time
                try:
                    new = function(key, values, state, out)
                except BatchError as error:
                    raise _batch_failure(error)
                except Exception as error:
                    raise _failure(start, error)
                if new is None or group_flags & 2:
                    states.append(b"")
                    flags.append(0)
                else:
                    states.append(_state_bytes(new))
                    flags.append(1)
                start = end
            return _types.StateUpdate(states=_flat(states), state_flags=bytes(flags), output=_output(out))


if hasattr(_exports, "CoTransform"):

    class CoTransform(_exports.CoTransform):
        """The `co-transform` export (transform-with): one partition of both
        inputs at once."""

        def process_pair(self, left, right):
            _, function, _, _ = _registered()
            left_view = BatchView(left.data, left.ends, left.timestamps, left.flags)
            right_view = BatchView(right.data, right.ends, right.timestamps, right.flags)
            out = Emitter(max(list(left.timestamps) + list(right.timestamps), default=0))
            try:
                function(left_view.records(), right_view.records(), out)
            except Exception as error:
                raise _batch_failure(error)
            return _output(out)
