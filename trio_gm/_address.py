"""Node addresses: what a node binds (``listen``) and what its peers dial (``advertise``).

A node's name, ``host:port#incarnation``, is what every member id on it
carries and what other nodes dial to reach it, so its ``host:port`` must be
one they can reach. A wildcard listen (``0.0.0.0``, ``::``) binds every
interface but names none of them: it needs ``advertise``. IPv6 hosts are
written in brackets wherever a port follows them (``[::1]:7000``).
"""

from __future__ import annotations

import ipaddress
from typing import Final

__all__ = ["format_address", "is_wildcard", "parse_advertise"]

#: The hosts that mean "every interface" to ``listen``.
_WILDCARDS: Final = frozenset({"", "*", "0.0.0.0", "::"})
_FORBIDDEN: Final = frozenset("#/@?\\ \t\r\n[]")


def is_wildcard(host: str) -> bool:
    """Whether binding ``host`` listens on every interface (so it names none)."""
    if host in _WILDCARDS:
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_advertise(value: object) -> tuple[str, int | None]:
    """``advertise`` as ``(host, port or None)``; ``ValueError`` naming what is wrong.

    Accepted: ``HOST``, ``HOST:PORT``, ``[IPV6]``, ``[IPV6]:PORT``, or a bare
    IPv6 address (then without a port: ``fe80::1:7000`` is an address).
    """
    if not isinstance(value, str):
        raise TypeError(f"advertise must be a str 'HOST' or 'HOST:PORT', got {value!r}")
    text = value.strip()
    port: int | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"advertise {value!r}: expected '[IPV6]' or '[IPV6]:PORT'")
        if rest:
            port = _port(rest[1:], value)
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"advertise {value!r}: {host!r} in brackets is not an IPv6 address"
            ) from None
    elif text.count(":") > 1:
        host = text
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"advertise {value!r}: not a host, 'HOST:PORT' or an IPv6 address "
                "(write an IPv6 address with a port as '[ADDR]:PORT')"
            ) from None
    else:
        host, sep, rest = text.partition(":")
        if sep:
            port = _port(rest, value)
    if not host:
        raise ValueError(f"advertise {value!r} names no host")
    if bad := sorted(set(host) & _FORBIDDEN):
        raise ValueError(f"advertise {value!r}: a host cannot contain {''.join(bad)!r}")
    if not host.isprintable() or len(host) > 253:
        raise ValueError(f"advertise {value!r} is not a host name or address")
    if is_wildcard(host):
        raise ValueError(
            f"advertise {value!r} is a wildcard address, which peers cannot dial: "
            "give this host's address as the other hosts reach it"
        )
    return host, port


def _port(text: str, value: object) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"advertise {value!r}: the port must be 1-65535, got {text!r}")
    return int(text)
