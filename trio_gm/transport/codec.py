"""Encoding values for the wire: msgpack, attrs classes, never pickle.

What can cross a node boundary:

* msgpack's own types: None, bool, int (-2**63 to 2**64 - 1), float, str,
  bytes (a bytearray arrives as bytes), lists and dicts (with keys of these
  types);
* tuples (kept as tuples, not turned into lists);
* trio_gm's own message classes (ids, ring messages, frames);
* attrs classes the user registers with :meth:`Codec.register`; they go
  through the codec's cattrs converter (``codec.converter``), so the user
  can teach it their own field types with cattrs hooks.

A user message is encoded once, at ``broadcast`` (:meth:`Codec.pack`):
anything that cannot cross is refused there with a ``TypeError`` or
``ValueError`` naming its part, and what is accepted travels as those bytes
(a ``(value, bytes)`` pair, :data:`~trio_gm._packed.Packed`) through every
hop; a plain message (a number, None, a bool, a short str or bytes: see
``trio_gm._packed``) travels as itself, which msgpack writes again at each
hop for less than keeping its bytes costs.

The wire form. An :class:`~trio_gm.ActorId` (in every frame, several times)
is one extension holding the array ``[node, serial]``: both sides keep the
ids they have seen by their bytes, so a known id costs a dict lookup each
way (its first decoding is checked as any internal value's fields are; an
id in the internal-class form below is accepted too). A tuple, an internal
value or a user value is a msgpack
array whose first item is a *marker* (a 1- or 2-byte extension value): the
tuple marker then the items; an internal class's marker (carrying its tag)
then its fields in declaration order (the field order is the wire format);
the user marker, the wire name, then the dict cattrs makes of the value. A
field declared to hold packed messages (``trio_gm._packed.PACKED``: the
publications of an activity entry, the pending messages of a snapshot) is,
when not empty, one extension holding an array: their lengths, then the
messages (their bytes, end to end), so a receiver decodes them in one pass
and keeps each one's bytes to forward; or, when every message of the field
is plain, a tuple of them, inline. Such a field holds nothing else.
Everything else is inline in one msgpack document, so neither side copies
nested values' bytes, and decoding is bottom-up with no recursion in
Python: a marked array becomes its value (``list_hook``) once
its items are decoded, after the fields of an internal class were checked
against their declared types (``validate``). A marker anywhere else than at
the head of an array is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import accumulate, islice
from operator import attrgetter, itemgetter
from typing import Any, Final

import attrs
import cattrs.preconf.msgpack
import msgpack

from .._ids import ActorId
from .._packed import PACKED, PLAIN_BOUND, PLAIN_LEN, PLAIN_NUMBERS, PLAIN_TYPES, Packed, is_plain
from .validate import Validator, validator

#: The extension code of markers (the head of a tuple, internal or user array).
EXT_MARK: Final = 1
#: A run of packed messages (a field declared ``PACKED``): their lengths,
#: then their bytes, end to end.
EXT_PACKED_RUN: Final = 5
#: An :class:`~trio_gm.ActorId`: the msgpack array ``[node, serial]``.
EXT_ID: Final = 6
#: Ids each side keeps by their bytes (the encoder by id, the decoder by
#: bytes), up to this many; the cache starts afresh when full.
_ID_CACHE: Final = 4096
#: An id whose bytes are longer than this is decoded and not kept (a node
#: name is at most 255 characters: see ``handshake.MAX_NAME_LENGTH``).
_ID_CACHE_BYTES: Final = 300

_MARK_TUPLE: Final = 0
_MARK_INTERNAL: Final = 1
_MARK_USER: Final = 2

#: Nesting a message may have, counted by the encoder (msgpack's own limits
#: are about a thousand levels, and the two sides' limits differ).
MAX_NESTING: Final = 500
#: Encoded messages longer than this (other than a lone str or bytes) are
#: decoded once at ``broadcast``, so a message the receivers could not
#: decode is refused there. A shorter one is too small to nest deeper than
#: the decoder can go.
_TRIAL_DECODE_OVER: Final = 200

_SCALARS: Final = (type(None), bool, int, float, str, bytes)
_PAIRS_OR_PLAIN: Final = PLAIN_TYPES | {tuple}
_STR_BYTES: Final = frozenset({str, bytes})
#: The plain types (``trio_gm._packed``), by what ``pack`` checks of them.
_INT: Final = 0
_FIXED: Final = 1
_TEXT: Final = 2
_BYTES: Final = 3
_PLAIN_KINDS: Final[dict[type, int]] = {
    int: _INT,
    float: _FIXED,
    bool: _FIXED,
    type(None): _FIXED,
    str: _TEXT,
    bytes: _BYTES,
}
#: The ints that cross the wire.
_INT_MAX: Final = 2**64 - 1
_INT_MIN: Final = -(2**63)
_second: Final = itemgetter(1)
#: A decoded message this long keeps a view of the bytes it came in.
_VIEW_OVER: Final = 65536


def _unsendable(cls: type) -> str:
    return (
        f"a value of type {cls.__module__}.{cls.__qualname__} cannot be sent to another "
        "node: use msgpack types (None, bool, int, float, str, bytes, list, tuple, dict) "
        "or an attrs class registered with node.codec.register()"
    )


class CodecError(ValueError):
    """Bytes that do not decode to a value this codec knows."""


def _plain_run(run: tuple[Any, ...]) -> bool:
    """Whether every message of ``run`` is plain (``trio_gm._packed.is_plain``)."""
    if PLAIN_NUMBERS.issuperset(map(type, run)):
        return True  # the common case, all in C
    kinds = set(map(type, run))
    if not kinds <= PLAIN_TYPES:
        return False
    if kinds <= _STR_BYTES:
        return max(map(len, run)) <= PLAIN_LEN
    return all(len(item) <= PLAIN_LEN for item in run if type(item) in _STR_BYTES)


def _describe_run(run: Any) -> str:
    if type(run) is not tuple:
        return type(run).__name__
    for item in run:
        if not is_plain(item):
            what = type(item).__name__
            if type(item) in _STR_BYTES:
                what += f" of length {len(item)}, above {PLAIN_LEN}"
            return f"a tuple holding a {what}"
    return "a tuple"  # pragma: no cover


def _no_fields(value: Any) -> tuple[()]:
    return ()


def _ext(code: int, data: bytes) -> Any:
    # ExtType's own constructor checks its arguments in Python: these are ours.
    return tuple.__new__(msgpack.ExtType, (code, data))


class _Run:
    """A decoded run of packed messages, until the field it fills takes it.

    ``pairs`` are ``(value, bytes)`` pairs, and plain messages as themselves.
    """

    __slots__ = ("pairs",)

    def __init__(self, pairs: tuple[Any, ...]) -> None:
        self.pairs = pairs


class _Mark:
    """A decoded marker: what the array it heads becomes."""

    __slots__ = ("kind", "tag")

    def __init__(self, kind: int, tag: int = 0) -> None:
        self.kind = kind
        self.tag = tag


class Codec:
    """Encodes and decodes values; one per node."""

    def __init__(self, internal: Iterable[type] = ()) -> None:
        self.converter = cattrs.preconf.msgpack.make_converter()
        self._internal_tags: dict[type, int] = {}
        self._internal_classes: list[type] = []
        self._internal_fields: list[tuple[str, ...]] = []
        #: The field type check of each internal class (``validate``), by tag.
        self._internal_validators: list[Validator] = []
        #: The marker each internal class's arrays start with, by tag.
        self._internal_marks: list[Any] = []
        #: The indexes of the fields holding packed messages, by tag.
        self._packed_fields: list[tuple[int, ...]] = []
        #: What encoding an internal value takes, by class: its marker, a
        #: getter of its fields (attrgetter: one call in C), how many fields
        #: it has, and which hold packed messages.
        self._encoders: dict[type, tuple[Any, Callable[[Any], Any], int, tuple[int, ...]]] = {}
        self._user_tags: dict[type, str] = {}
        self._user_classes: dict[str, type] = {}
        #: Decoded markers by their bytes.
        self._marks: dict[bytes, _Mark] = {
            bytes([_MARK_TUPLE]): _Mark(_MARK_TUPLE),
            bytes([_MARK_USER]): _Mark(_MARK_USER),
        }
        self._tuple_mark = _ext(EXT_MARK, bytes([_MARK_TUPLE]))
        self._user_mark = _ext(EXT_MARK, bytes([_MARK_USER]))
        for cls in (ActorId, *internal):
            self._add_internal(cls)
        #: Encoded ids by id, and decoded ids by their bytes (``EXT_ID``).
        self._id_exts: dict[ActorId, Any] = {}
        self._ids: dict[bytes, ActorId] = {}
        self._id_validator = self._internal_validators[self._internal_tags[ActorId]]
        self._default_hook: Callable[[Any], Any] = self._default
        self._ext_hook_ref: Callable[[int, bytes], Any] = self._ext_hook
        self._list_hook_ref: Callable[[list[Any]], Any] = self._list_hook
        #: Reused: making a packer allocates its buffer.
        self._packer = self._new_packer()
        self._packing = False
        #: For the headers of runs, made while ``_packer`` is busy.
        self._aux_packer = msgpack.Packer(use_bin_type=True, strict_types=True)
        #: Markers decoded and not yet consumed by the head of their array.
        self._open_marks = 0

    def _add_internal(self, cls: type) -> None:
        if not attrs.has(cls):
            raise TypeError(f"{cls!r} is not an attrs class")
        tag = len(self._internal_classes)
        if tag > 255:
            raise ValueError("at most 256 internal classes")
        self._internal_tags[cls] = tag
        self._internal_marks.append(_ext(EXT_MARK, bytes([_MARK_INTERNAL, tag])))
        self._marks[bytes([_MARK_INTERNAL, tag])] = _Mark(_MARK_INTERNAL, tag)
        self._internal_classes.append(cls)
        self._internal_fields.append(tuple(f.name for f in attrs.fields(cls)))
        key = next(iter(PACKED))
        self._packed_fields.append(
            tuple(i for i, f in enumerate(attrs.fields(cls)) if f.metadata.get(key))
        )
        self._internal_validators.append(validator(cls))
        names = self._internal_fields[tag]
        self._encoders[cls] = (
            self._internal_marks[tag],
            attrgetter(*names) if names else _no_fields,
            len(names),
            self._packed_fields[tag],
        )

    def register(self, cls: type, *, name: str | None = None) -> None:
        """Let instances of the attrs class ``cls`` cross the wire.

        ``name`` (default ``module.qualname``) is what identifies the class
        on the wire: every node of a group must register it under the same
        name.
        """
        if not attrs.has(cls):
            raise TypeError(f"only attrs classes can be registered, got {cls!r}")
        tag = name if name is not None else f"{cls.__module__}.{cls.__qualname__}"
        known = self._user_classes.get(tag)
        if known is not None and known is not cls:
            raise ValueError(f"wire name {tag!r} is already registered for {known!r}")
        self._user_tags[cls] = tag
        self._user_classes[tag] = cls

    # -- checking -----------------------------------------------------------

    def check(self, value: Any) -> None:
        """Raise the ``TypeError`` or ``ValueError`` :meth:`pack` would for ``value``."""
        problem = self._find_problem(value)
        if problem is not None:
            raise problem

    # -- encoding -----------------------------------------------------------

    def _default(self, value: Any) -> Any:
        cls = type(value)
        if cls is tuple:
            return [self._tuple_mark, *value]
        if cls is ActorId:
            try:
                ext = self._id_exts.get(value)
                if ext is None:
                    ext = self._id_ext(value)
                return ext
            except Exception:
                pass  # not a well-made id (a test's raw frame): the general form below
        encoder = self._encoders.get(cls)
        if encoder is not None:
            mark, getter, count, packed = encoder
            if count > 1:
                items = [mark, *getter(value)]
            elif count:
                items = [mark, getter(value)]
            else:
                items = [mark]
            for index in packed:
                run = items[index + 1]
                if run and type(run) is tuple:  # (else the receiver refuses it)
                    kinds = set(map(type, run))
                    if tuple in kinds:
                        items[index + 1] = self._run_ext(run, kinds)
                    elif not kinds <= PLAIN_TYPES:
                        raise TypeError(
                            "a field of packed messages holds something else than "
                            "(value, bytes) pairs and plain values"
                        )
                    # else all plain: inline, as a tuple
            return items
        user_tag = self._user_tags.get(cls)
        if user_tag is not None:
            return [self._user_mark, user_tag, self.converter.unstructure(value)]
        raise TypeError(_unsendable(cls))

    def _id_ext(self, value: ActorId) -> Any:
        data = self._aux_packer.pack([value.node, value.serial])
        ext = _ext(EXT_ID, data)
        if len(data) <= _ID_CACHE_BYTES:
            if len(self._id_exts) >= _ID_CACHE:
                self._id_exts.clear()
            self._id_exts[value] = ext
        return ext

    def _run_ext(self, run: Any, kinds: set[type]) -> Any:
        """The extension of a run of packed messages: lengths, then bytes.

        ``kinds`` are the types in ``run``: pairs (tuples), and plain values
        among them are encoded here.
        """
        aux = self._aux_packer
        try:
            if len(kinds) == 1:  # pairs only
                parts = list(map(_second, run))
            else:
                if not kinds <= _PAIRS_OR_PLAIN:
                    raise TypeError
                parts = [item[1] if type(item) is tuple else aux.pack(item) for item in run]
            head = aux.pack_array_header(len(parts) + 1)
            lengths = aux.pack(list(map(len, parts)))
            return _ext(EXT_PACKED_RUN, b"".join([head, lengths, *parts]))
        except (TypeError, IndexError) as exc:
            raise TypeError(
                "a field of packed messages holds something else than (value, bytes) pairs "
                "and plain values"
            ) from exc

    def _new_packer(self) -> Any:
        return msgpack.Packer(default=self._default_hook, use_bin_type=True, strict_types=True)

    def encode(self, value: Any) -> bytes:
        """Bytes for ``value``; ``TypeError`` names a part that cannot be sent."""
        if self._packing:
            # Re-entered (from a cattrs hook, say): the shared packer is busy.
            nested: bytes = self._new_packer().pack(value)
            return nested
        self._packing = True
        try:
            result: bytes = self._packer.pack(value)
        except BaseException:
            # The packer may hold part of the value: start afresh.
            self._packer = self._new_packer()
            raise
        finally:
            self._packing = False
        return result

    def pack(self, msg: Any, *, max_size: int | None = None) -> Packed | Any:
        """Encode a user message once, for :meth:`Member.broadcast`.

        Returns what the ring carries: the pair ``(msg, its bytes)``, or for
        a plain message (``trio_gm._packed.is_plain``) ``msg`` itself, once
        it is known to encode (within ``max_size``).

        Raises ``TypeError`` or ``ValueError`` naming the part of ``msg``
        that cannot cross the wire (``msg[1]``, ``msg['key']``, ``msg.field``)
        and why, or, with ``max_size``, when the encoded message is longer.
        """
        # What is plain and known to encode needs no encoding to know: an int
        # in range, a float, a bool, None, short ASCII text or bytes.
        cls = type(msg)
        if cls is int:  # the commonest first
            if _INT_MIN <= msg <= _INT_MAX and (max_size is None or max_size >= 9):
                return msg
            kind: int | None = _INT
        else:
            kind = _PLAIN_KINDS.get(cls)
            if kind is not None and (max_size is None or max_size >= PLAIN_BOUND):
                if kind == _FIXED:
                    return msg
                if len(msg) <= PLAIN_LEN and (kind == _BYTES or msg.isascii()):
                    return msg
        if self._packing:  # re-entered, from a cattrs hook say: the slow way
            try:
                data = self.encode(msg)
            except Exception as exc:
                raise self._explain(msg, exc) from None
        else:  # encode(), inlined: this is the cost of every broadcast
            self._packing = True
            try:
                data = self._packer.pack(msg)
            except BaseException as exc:
                self._packer = self._new_packer()
                self._packing = False
                if not isinstance(exc, Exception):
                    raise
                raise self._explain(msg, exc) from None
            self._packing = False
        if len(data) > _TRIAL_DECODE_OVER and cls not in _SCALARS:
            try:
                # Inside two arrays, as in a run of messages: the receivers
                # decode it one level deeper than it was encoded.
                self.decode(b"\x91\x91" + data)
            except CodecError as exc:
                raise self._explain(msg, exc) from None
        if max_size is not None and len(data) > max_size:
            raise ValueError(
                f"msg encodes to {len(data)} bytes, more than max_message_size={max_size} bytes"
            )
        if kind is not None and (kind <= _FIXED or len(msg) <= PLAIN_LEN):
            return msg  # plain: (non-ASCII text, or a small max_size)
        return (msg, data)

    def _explain(self, msg: Any, exc: BaseException) -> Exception:
        """The error :meth:`pack` raises: the first part of ``msg`` that fails."""
        found = self._find_problem(msg)
        if found is not None:
            return found
        if isinstance(exc, CodecError):
            return ValueError(f"msg cannot be decoded by the receivers: {exc}")
        if isinstance(exc, TypeError | ValueError):
            return type(exc)(f"msg cannot be sent: {exc}")
        return ValueError(f"msg cannot be sent: {type(exc).__name__}: {exc}")

    def _find_problem(self, msg: Any) -> Exception | None:
        """Walk ``msg`` depth first (without recursion) for a part that cannot cross."""
        stack: list[tuple[Any, str, int]] = [(msg, "msg", 0)]
        while stack:
            value, path, depth = stack.pop()
            if depth > MAX_NESTING:
                return ValueError(f"msg is nested more than {MAX_NESTING} levels deep")
            cls = type(value)
            children: list[tuple[Any, str]] = []
            if cls is int:
                if not -(2**63) <= value < 2**64:
                    return ValueError(
                        f"{path}: the int {value} is outside what crosses the wire "
                        "(-2**63 to 2**64 - 1); send it as a str or bytes"
                    )
            elif cls is str:
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as exc:
                    return ValueError(
                        f"{path}: the str has a lone surrogate {value[exc.start]!r} at index "
                        f"{exc.start}, which UTF-8 cannot encode"
                    )
            elif cls in _SCALARS or cls in self._internal_tags:
                pass
            elif cls is list or cls is tuple:
                children = [(item, f"{path}[{index}]") for index, item in enumerate(value)]
            elif cls is dict:
                for key, item in value.items():
                    children.append((key, f"{path} key {key!r}"))
                    children.append((item, f"{path}[{key!r}]"))
            elif cls in self._user_tags:
                try:
                    fields = self.converter.unstructure(value)
                except Exception as exc:
                    return ValueError(f"{path}: cattrs cannot unstructure it: {exc!r}")
                if type(fields) is dict:
                    children = [(item, f"{path}.{key}") for key, item in fields.items()]
                else:
                    children = [(fields, path)]
            else:
                return TypeError(f"{path}: {_unsendable(cls)}")
            stack.extend((child, child_path, depth + 1) for child, child_path in reversed(children))
        return None

    # -- decoding -----------------------------------------------------------

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == EXT_ID:
            known = self._ids.get(data)
            if known is not None:
                return known
            return self._decode_id(data)
        if code == EXT_MARK:
            mark = self._marks.get(data)
            if mark is None:
                raise CodecError(f"unknown marker {data!r}")
            self._open_marks += 1
            return mark
        if code == EXT_PACKED_RUN:
            run = _Run(self._decode_run(data))
            self._open_marks += 1  # until the field it fills takes it
            return run
        raise CodecError(f"unknown msgpack extension type {code}")

    def _list_hook(self, items: list[Any]) -> Any:
        if not items:
            return items
        mark = items[0]
        if type(mark) is not _Mark:
            return items
        self._open_marks -= 1
        kind = mark.kind
        if kind == _MARK_TUPLE:
            del items[0]
            return tuple(items)
        if kind == _MARK_INTERNAL:
            tag = mark.tag
            fields = self._internal_fields[tag]
            cls = self._internal_classes[tag]
            if len(items) - 1 != len(fields):
                raise CodecError(f"{cls.__name__} takes {len(fields)} fields, got {len(items) - 1}")
            for index in self._packed_fields[tag]:
                run = items[index + 1]
                if type(run) is _Run:
                    items[index + 1] = run.pairs
                    self._open_marks -= 1
                elif type(run) is not tuple or (run and not _plain_run(run)):
                    raise CodecError(
                        f"{cls.__name__}.{fields[index]}: expected a run of packed "
                        f"messages or a tuple of plain ones, got {_describe_run(run)}"
                    )
            # Every field has its declared type before anything uses the value.
            checker = self._internal_validators[tag]
            if not checker.check(items):
                raise CodecError(checker.explain(items))
            try:
                return cls(*items[1:])
            except (TypeError, ValueError) as exc:
                raise CodecError(f"bad {cls.__name__}: {exc}") from exc
        if len(items) != 3 or type(items[1]) is not str:
            raise CodecError("a user value must be [marker, name, value]")
        user_cls = self._user_classes.get(items[1])
        if user_cls is None:
            raise CodecError(f"no class registered under the wire name {items[1]!r}")
        try:
            return self.converter.structure(items[2], user_cls)
        except Exception as exc:
            raise CodecError(f"bad {items[1]}: {exc}") from exc

    def _decode_id(self, data: bytes) -> ActorId:
        # Plain msgpack, no hooks: an id holds no markers, runs or ids.
        items = msgpack.unpackb(data, raw=False, use_list=True)
        if type(items) is not list or len(items) != 2:
            raise CodecError("an id must be [node, serial]")
        fields = [None, *items]
        checker = self._id_validator
        if not checker.check(fields):
            raise CodecError(checker.explain(fields))
        try:
            value = ActorId(*items)
        except (TypeError, ValueError) as exc:
            raise CodecError(f"bad ActorId: {exc}") from exc
        if len(data) <= _ID_CACHE_BYTES:
            if len(self._ids) >= _ID_CACHE:
                self._ids.clear()
            self._ids[data] = value
        return value

    def _decode_run(self, data: bytes) -> tuple[Any, ...]:
        # [lengths, message, message, ...]: the messages' bytes are the end
        # of ``data``, one after the other, of these lengths.
        items = self.decode(data)
        if type(items) is not list or len(items) < 2 or type(items[0]) is not list:
            raise CodecError("a run of messages must be [lengths, message, ...]")
        lengths = items[0]
        if len(lengths) != len(items) - 1:
            raise CodecError(f"a run of {len(items) - 1} messages with {len(lengths)} lengths")
        # (Lengths of another type fail in sum() or in slicing, which decode()
        # turns into a CodecError: no check per message in Python.)
        if min(lengths) < 1:
            raise CodecError("a message length below 1 in a run")
        start = len(data) - sum(lengths)
        if start < 0:
            raise CodecError("a run of messages longer than its extension")
        ends = list(accumulate(lengths, initial=start))
        del items[0]
        pairs: Iterable[Packed]
        if max(lengths) < _VIEW_OVER:
            # All in C: the slices, then the (value, bytes) pairs.
            pieces = map(data.__getitem__, map(slice, ends, islice(ends, 1, None)))
            pairs = zip(items, pieces, strict=False)
        else:
            # A large message keeps a view of the run's bytes, not a copy.
            view = memoryview(data)
            pairs = [
                (value, (data if end - begin < _VIEW_OVER else view)[begin:end])
                for value, begin, end in zip(items, ends, ends[1:], strict=False)
            ]
        if PLAIN_TYPES.isdisjoint(map(type, items)):
            return tuple(pairs)
        # A run holding a plain message among others (a mix of kinds from
        # one publisher): each plain one as itself, as it was sent.
        return tuple(
            [
                pair[0]
                if type(pair[0]) in PLAIN_NUMBERS
                or (type(pair[0]) in _STR_BYTES and len(pair[0]) <= PLAIN_LEN)
                else pair
                for pair in pairs
            ]
        )

    def decode(self, data: bytes) -> Any:
        """The value ``data`` encodes; ``CodecError`` if it is not one of ours."""
        outer = self._open_marks
        self._open_marks = 0
        try:
            value = msgpack.unpackb(
                data,
                ext_hook=self._ext_hook_ref,
                list_hook=self._list_hook_ref,
                raw=False,
                strict_map_key=False,
                use_list=True,
            )
            if self._open_marks:
                raise CodecError("a marker or run outside its place")
            return value
        except CodecError:
            raise
        except Exception as exc:
            raise CodecError(f"undecodable frame: {exc}") from exc
        finally:
            self._open_marks = outer
