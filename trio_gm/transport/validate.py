"""Type checks for the fields of decoded trio_gm values.

The decoder builds trio_gm's own attrs classes (ids, frames, ring messages,
store values) from fields a peer sent. attrs does not check types, so
without this a frame such as ``Hello(5, b"n")`` or ``Send(to=5, ...)`` would
reach code that assumes a ``str`` or an ``ActorId`` and crash there. So the
codec checks every decoded value against its class's declared field types
before it builds the value (:func:`validator`), and refuses it with a
:class:`~trio_gm.transport.codec.CodecError` naming the class, the field,
the type expected and the type found.

The check of one class is compiled once, into one Python expression over the
fields (as attrs compiles its ``__init__``): ring messages are decoded on
the hot path. Decoding is bottom-up (msgpack builds the innermost values
first), so a field typed with a trio_gm class only needs its value's type
checked: that value was checked when it was built.

Annotations understood: ``str``, ``bytes``, ``bool``, ``int`` (exactly:
``True`` is not an ``int`` here), ``float`` (an ``int`` is accepted, as in
typing's numeric tower; ``bool`` is not), ``None``, ``Any`` (anything
decodable: user payloads), unions (``X | None``), classes (attrs classes
above all; the value's type must be the class itself), ``tuple[X, ...]``,
``tuple[A, B]``, ``tuple[()]``, ``list[X]`` and ``dict[K, V]``. Anything
else is a ``TypeError`` when the codec is made, so a new field of another
kind cannot slip through unchecked.

attrs validators and converters still run when the checked value is built
(a :class:`~trio_gm.store.Group` must hold each member id once); the codec
turns their errors into ``CodecError`` too.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable
from typing import Any, Final

import attrs

#: The expression of a check that always holds (a field typed ``Any``).
_ANY: Final = "True"


@attrs.frozen
class Validator:
    """The field check of one class.

    ``check(parts)`` is the fast check the decoder calls: ``parts`` is the
    decoded ``[tag, field, field, ...]`` list (the fields start at index 1,
    so the decoder need not slice it) and the result says whether every
    field has its declared type. ``explain(parts)`` says what is wrong, for
    the error message, once ``check`` has said no.
    """

    cls: type
    names: tuple[str, ...]
    hints: tuple[Any, ...]
    check: Callable[[list[Any]], bool]
    #: One compiled check per field (same order), used by ``explain``.
    field_checks: tuple[Callable[[Any], bool], ...]
    #: The source ``check`` was compiled from (for reading, and tests).
    source: str

    def explain(self, parts: list[Any]) -> str:
        """``"Hello.name: expected str, got int"``: the first bad field."""
        for index, (name, hint, ok) in enumerate(
            zip(self.names, self.hints, self.field_checks, strict=True), start=1
        ):
            value = parts[index]
            if not ok(value):
                path, expected, got = _locate(hint, value, name)
                return f"{self.cls.__name__}.{path}: expected {expected}, got {got}"
        return f"{self.cls.__name__}: fields do not match"  # pragma: no cover


@functools.cache
def validator(cls: type) -> Validator:
    """Compile the field check of the attrs class ``cls`` (once per class).

    Raises ``TypeError`` naming the class and field if a field's annotation
    is not one this module understands, or cannot be resolved.
    """
    if not attrs.has(cls):
        raise TypeError(f"{cls!r} is not an attrs class")
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:
        raise TypeError(f"cannot resolve the field types of {cls.__qualname__}: {exc}") from exc
    fields = attrs.fields(cls)
    names = tuple(f.name for f in fields)
    field_hints = tuple(hints.get(name, Any) for name in names)
    env: dict[str, Any] = {}
    exprs: list[str] = []
    for index, (name, hint) in enumerate(zip(names, field_hints, strict=True), start=1):
        try:
            expr = _expr(hint, f"p[{index}]", env, 0)
        except TypeError as exc:
            raise TypeError(f"{cls.__qualname__}.{name}: {exc}") from None
        if expr != _ANY:
            exprs.append(expr)
    source = f"lambda p: {' and '.join(exprs) if exprs else 'True'}"
    check = _compile(source, env)
    return Validator(
        cls=cls,
        names=names,
        hints=field_hints,
        check=check,
        field_checks=tuple(_predicate(hint) for hint in field_hints),
        source=source,
    )


# -- compiling ------------------------------------------------------------------


def _compile(source: str, env: dict[str, Any]) -> Any:
    # ``source`` is made only of this module's templates, integers and the
    # names it bound in ``env``: nothing a peer sent.
    namespace = {"__builtins__": {}, "type": type, "len": len, "all": all, "map": map}
    return eval(source, {**namespace, **env})


@functools.lru_cache(maxsize=512)
def _predicate(hint: Any) -> Callable[[Any], bool]:
    """A one-value check for ``hint``, compiled as :func:`validator` does."""
    env: dict[str, Any] = {}
    result: Callable[[Any], bool] = _compile(f"lambda v: {_expr(hint, 'v', env, 0)}", env)
    return result


def _bind(env: dict[str, Any], value: Any) -> str:
    for name, bound in env.items():
        if bound is value:
            return name
    name = f"_t{len(env)}"
    env[name] = value
    return name


def _exact_types(hint: Any) -> frozenset[type] | None:
    """The types a value matching ``hint`` may have, if its type is all that matters."""
    if hint is Any or hint is object:
        return None
    if hint is None or hint is type(None):
        return frozenset({type(None)})
    if hint is float:
        return frozenset({float, int})
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        found: frozenset[type] = frozenset()
        for arg in typing.get_args(hint):
            some = _exact_types(arg)
            if some is None:
                return None
            found |= some
        return found
    if origin is None and isinstance(hint, type):
        return frozenset({hint})
    return None


def _expr(hint: Any, var: str, env: dict[str, Any], depth: int) -> str:
    """A boolean expression that holds when the value named ``var`` matches ``hint``.

    ``var`` is a name or a subscription (``p[1]``, ``x0``); ``depth`` names
    the loop variables of nested containers apart.
    """
    if hint is Any or hint is object:
        return _ANY
    exact = _exact_types(hint)
    if exact is not None:
        if len(exact) == 1:
            (only,) = exact
            return f"type({var}) is {_bind(env, only)}"
        return f"type({var}) in {_bind(env, exact)}"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        alternatives = [_expr(arg, var, env, depth) for arg in args]
        if _ANY in alternatives:
            return _ANY
        return "(" + " or ".join(alternatives) + ")"
    if origin is tuple:
        head = f"type({var}) is {_bind(env, tuple)}"
        if len(args) == 2 and args[1] is Ellipsis:
            return _each(head, args[0], var, env, depth)
        if args == ((),):  # tuple[()] on older Pythons
            args = ()
        parts = [head, f"len({var}) == {len(args)}"]
        for index, arg in enumerate(args):
            expr = _expr(arg, f"{var}[{index}]", env, depth)
            if expr != _ANY:
                parts.append(expr)
        return "(" + " and ".join(parts) + ")"
    if origin is list:
        return _each(f"type({var}) is {_bind(env, list)}", args[0], var, env, depth)
    if origin is dict:
        head = f"type({var}) is {_bind(env, dict)}"
        k, v = f"k{depth}", f"v{depth}"
        checks = [
            e
            for e in (_expr(args[0], k, env, depth + 1), _expr(args[1], v, env, depth + 1))
            if e != _ANY
        ]
        if not checks:
            return head
        return f"({head} and all({' and '.join(checks)} for {k}, {v} in {var}.items()))"
    raise TypeError(f"field type {hint!r} is not one the decoder can check")


def _each(head: str, item: Any, var: str, env: dict[str, Any], depth: int) -> str:
    """``head`` (the container's type) and a check of every item of ``var``."""
    exact = _exact_types(item)
    if exact is not None:
        # One C-level pass, no generator: the common case on the hot path.
        return f"({head} and {_bind(env, exact)}.issuperset(map(type, {var})))"
    x = f"x{depth}"
    inner = _expr(item, x, env, depth + 1)
    if inner == _ANY:
        return head
    return f"({head} and all({inner} for {x} in {var}))"


# -- explaining -----------------------------------------------------------------


def _locate(hint: Any, value: Any, path: str) -> tuple[str, str, str]:
    """Where in ``value`` it stops matching ``hint``: (path, expected, got)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (tuple, list) and type(value) is origin:
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            for index, item in enumerate(value):
                if not _predicate(args[0])(item):
                    return _locate(args[0], item, f"{path}[{index}]")
        elif len(value) == len(args):
            for index, (arg, item) in enumerate(zip(args, value, strict=True)):
                if not _predicate(arg)(item):
                    return _locate(arg, item, f"{path}[{index}]")
        else:
            return path, describe(hint), f"a tuple of {len(value)} items"
    if origin is dict and type(value) is dict:
        key_hint, value_hint = args
        for key, item in value.items():
            if not _predicate(key_hint)(key):
                return _locate(key_hint, key, f"{path} key")
            if not _predicate(value_hint)(item):
                return _locate(value_hint, item, f"{path}[{key!r}]")
    return path, describe(hint), type(value).__name__


def describe(hint: Any) -> str:
    """A short name for a field type: ``tuple[ActivityEntry, ...]``, ``str | None``."""
    if hint is Any:
        return "Any"
    if hint is None or hint is type(None):
        return "None"
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(describe(arg) for arg in args)
    if origin is not None:
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{describe(args[0])}, ...]"
        if origin is tuple and not args:
            return "tuple[()]"
        return f"{origin.__name__}[{', '.join(describe(arg) for arg in args)}]"
    if isinstance(hint, type):
        return hint.__name__
    return repr(hint)  # pragma: no cover
