"""Encoding values for the wire: msgpack, attrs classes, never pickle.

What can cross a node boundary:

* msgpack's own types: None, bool, int, float, str, bytes, lists and dicts
  (with keys of these types);
* tuples (kept as tuples, not turned into lists);
* trio_gm's own message classes (ids, ring messages, frames);
* attrs classes the user registers with :meth:`Codec.register`; they go
  through the codec's cattrs converter (``codec.converter``), so the user
  can teach it their own field types with cattrs hooks.

Anything else is refused with a ``TypeError`` naming its type: at
``broadcast`` (by :meth:`Codec.check`, before the message enters the ring)
and at encoding.

Each attrs value is one msgpack extension value holding the class's tag and
its fields; trio_gm's own classes are encoded positionally (their field
order is the wire format), user classes as the dict cattrs makes of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs
import cattrs.preconf.msgpack
import msgpack

from .._ids import ActorId

EXT_TUPLE: Final = 1
EXT_INTERNAL: Final = 2
EXT_USER: Final = 3

_SCALARS: Final = (type(None), bool, int, float, str, bytes)


class CodecError(ValueError):
    """Bytes that do not decode to a value this codec knows."""


class Codec:
    """Encodes and decodes values; one per node."""

    def __init__(self, internal: Iterable[type] = ()) -> None:
        self.converter = cattrs.preconf.msgpack.make_converter()
        self._internal_tags: dict[type, int] = {}
        self._internal_classes: list[type] = []
        self._internal_fields: list[tuple[str, ...]] = []
        self._user_tags: dict[type, str] = {}
        self._user_classes: dict[str, type] = {}
        for cls in (ActorId, *internal):
            self._add_internal(cls)
        self._packer_default: Callable[[Any], Any] = self._default

    def _add_internal(self, cls: type) -> None:
        if not attrs.has(cls):
            raise TypeError(f"{cls!r} is not an attrs class")
        self._internal_tags[cls] = len(self._internal_classes)
        self._internal_classes.append(cls)
        self._internal_fields.append(tuple(f.name for f in attrs.fields(cls)))

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
        """Raise ``TypeError`` naming the first part of ``value`` that cannot be sent."""
        cls = type(value)
        if cls in _SCALARS:
            return
        if cls is list or cls is tuple:
            for item in value:
                self.check(item)
            return
        if cls is dict:
            for key, item in value.items():
                self.check(key)
                self.check(item)
            return
        if cls in self._user_tags or cls in self._internal_tags:
            return
        raise TypeError(
            f"a value of type {cls.__module__}.{cls.__qualname__} cannot be sent to "
            "another node: use msgpack types (None, bool, int, float, str, bytes, "
            "list, tuple, dict) or an attrs class registered with node.codec.register()"
        )

    # -- encoding -----------------------------------------------------------

    def _default(self, value: Any) -> Any:
        cls = type(value)
        if cls is tuple:
            return msgpack.ExtType(EXT_TUPLE, self.encode(list(value)))
        tag = self._internal_tags.get(cls)
        if tag is not None:
            fields = self._internal_fields[tag]
            return msgpack.ExtType(
                EXT_INTERNAL, self.encode([tag, *(getattr(value, f) for f in fields)])
            )
        user_tag = self._user_tags.get(cls)
        if user_tag is not None:
            return msgpack.ExtType(
                EXT_USER, self.encode([user_tag, self.converter.unstructure(value)])
            )
        self.check(value)  # raises, naming the type
        raise TypeError(f"cannot encode {value!r}")  # pragma: no cover

    def encode(self, value: Any) -> bytes:
        """Bytes for ``value``; ``TypeError`` names a part that cannot be sent."""
        result: bytes = msgpack.packb(
            value, default=self._packer_default, use_bin_type=True, strict_types=True
        )
        return result

    # -- decoding -----------------------------------------------------------

    def _ext_hook(self, code: int, data: bytes) -> Any:
        if code == EXT_TUPLE:
            items = self.decode(data)
            if type(items) is not list:
                raise CodecError("a tuple extension must hold an array")
            return tuple(items)
        if code == EXT_INTERNAL:
            parts = self.decode(data)
            if type(parts) is not list or not parts or type(parts[0]) is not int:
                raise CodecError("a message extension must hold [tag, fields...]")
            tag = parts[0]
            if not 0 <= tag < len(self._internal_classes):
                raise CodecError(f"unknown message tag {tag}")
            fields = self._internal_fields[tag]
            if len(parts) - 1 != len(fields):
                raise CodecError(
                    f"{self._internal_classes[tag].__name__} takes {len(fields)} fields, "
                    f"got {len(parts) - 1}"
                )
            try:
                return self._internal_classes[tag](*parts[1:])
            except (TypeError, ValueError) as exc:
                raise CodecError(f"bad {self._internal_classes[tag].__name__}: {exc}") from exc
        if code == EXT_USER:
            parts = self.decode(data)
            if type(parts) is not list or len(parts) != 2 or type(parts[0]) is not str:
                raise CodecError("a user value extension must hold [name, value]")
            cls = self._user_classes.get(parts[0])
            if cls is None:
                raise CodecError(f"no class registered under the wire name {parts[0]!r}")
            try:
                return self.converter.structure(parts[1], cls)
            except Exception as exc:
                raise CodecError(f"bad {parts[0]}: {exc}") from exc
        raise CodecError(f"unknown msgpack extension type {code}")

    def decode(self, data: bytes) -> Any:
        """The value ``data`` encodes; ``CodecError`` if it is not one of ours."""
        try:
            return msgpack.unpackb(
                data,
                ext_hook=self._ext_hook,
                raw=False,
                strict_map_key=False,
                use_list=True,
            )
        except CodecError:
            raise
        except Exception as exc:
            raise CodecError(f"undecodable frame: {exc}") from exc
