"""The node cookie: a per-user secret kept in a file, as Erlang's ``~/.erlang.cookie``.

Nodes prove to each other that they know the cookie (an HMAC
challenge-response in the transport; the cookie itself is never sent).
Without ``cookie=``, :func:`trio_gm.open_node` takes it from the per-user
cookie file, which :func:`load_cookie` creates on first use: 32 random bytes
written as 64 hex digits and a newline, mode 0600, in a directory of mode
0700. Every node one user starts on a host then shares the cookie with no
configuration, while another user, who cannot read the file, gets a cookie
of their own and is refused. To share the cookie across hosts, copy the file
(keeping mode 0600) or point ``TRIO_GM_COOKIE_FILE`` at a copy.

The file is ``$TRIO_GM_COOKIE_FILE`` if set, else
``$XDG_CONFIG_HOME/trio-gm/cookie``, else ``~/.config/trio-gm/cookie``.

Creation is race-free: the cookie is written to a temporary file (mode 0600)
in the same directory, which is then hard-linked to the final name. The link
fails if another process got there first, and everyone then reads the
winner's file, so nodes starting at once end up with one cookie, and nobody
ever reads a half-written one.

A cookie file is refused, with a :class:`~trio_gm.CookieError` naming it and
saying how to fix it, when group or others have any access to it (mode bits
0077, as Erlang checks), when another user owns it, when it is empty (only
whitespace) or when it is not a regular file. The cookie is the file's
contents with surrounding whitespace stripped.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import stat
from pathlib import Path
from typing import Final

import trio

from ._exceptions import CookieError

#: The environment variable naming the cookie file, overriding the default.
COOKIE_FILE_ENV: Final = "TRIO_GM_COOKIE_FILE"

#: Random bytes in a new cookie (written as twice as many hex digits).
COOKIE_BYTES: Final = 32


def default_cookie_path() -> Path:
    """Where this user's cookie file is (whether or not it exists yet).

    ``$TRIO_GM_COOKIE_FILE`` if set, else ``$XDG_CONFIG_HOME/trio-gm/cookie``
    (a relative ``XDG_CONFIG_HOME`` is ignored, as the XDG specification
    says), else ``~/.config/trio-gm/cookie``.
    """
    explicit = os.environ.get(COOKIE_FILE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME")
    if config and os.path.isabs(config):
        base = Path(config)
    else:
        try:
            base = Path.home() / ".config"
        except RuntimeError as exc:
            raise CookieError(
                f"cannot find the home directory for the cookie file ({exc}); "
                f"set {COOKIE_FILE_ENV} to the cookie file's path"
            ) from exc
    return base / "trio-gm" / "cookie"


async def load_cookie(path: Path | str | None = None, *, create: bool = True) -> bytes:
    """The cookie in ``path`` (default: :func:`default_cookie_path`).

    With ``create`` (the default) a missing file is created with a new
    random cookie; without it a missing file is a :class:`CookieError`, as
    is an unsafe, empty or unreadable one. The file is read in a worker
    thread, never blocking the trio loop.
    """
    return await trio.to_thread.run_sync(_load, None if path is None else Path(path), create)


def _load(path: Path | None, create: bool) -> bytes:
    if path is None:  # here, in the thread: finding the home may read /etc/passwd
        path = default_cookie_path()
    try:
        return _read(path, create)
    except FileNotFoundError as exc:
        if not create:
            raise _unreadable(path, exc) from exc
    _create(path)
    try:
        return _read(path, create)
    except FileNotFoundError as exc:  # e.g. a dangling symlink took the name
        raise _unreadable(path, exc) from exc


def _quoted(path: Path) -> str:
    return repr(str(path))


def _unreadable(path: Path, exc: OSError) -> CookieError:
    return CookieError(f"cannot read the cookie file {_quoted(path)}: {exc.strerror or exc}")


def _read(path: Path, create: bool) -> bytes:
    """Check and read the cookie file; FileNotFoundError if it is missing."""
    # O_NONBLOCK: opening a FIFO must not hang; checks are made on the open
    # file (fstat), so the file checked is the file read.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    try:
        info = os.fstat(fd)
        _check(path, info)
        chunks: list[bytes] = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    finally:
        os.close(fd)
    cookie = b"".join(chunks).strip()
    if not cookie:
        hint = "remove it to have a new cookie made, or put" if create else "put"
        raise CookieError(
            f"the cookie file {_quoted(path)} is empty: {hint} the cookie in it (mode 0600)"
        )
    return cookie


def _check(path: Path, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise CookieError(
            f"the cookie file {_quoted(path)} is {kind}, not a regular file holding the "
            f"cookie: remove it or name another file ({COOKIE_FILE_ENV})"
        )
    if os.name != "posix":  # pragma: no cover - modes and owners are POSIX's
        return
    me = os.geteuid()
    if info.st_uid != me:
        raise CookieError(
            f"the cookie file {_quoted(path)} is owned by uid {info.st_uid}, not by this "
            f"user (uid {me}): a cookie file is per user; use one of your own "
            f"({COOKIE_FILE_ENV}) or chown it"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise CookieError(
            f"the cookie file {_quoted(path)} has mode {mode:04o}: group and others must "
            f"have no access to it; fix it with: chmod 600 {shlex.quote(str(path))}"
        )


def _create(path: Path) -> None:
    """Make the cookie file unless another process makes it first."""
    directory = path.parent
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
    except OSError as exc:
        raise CookieError(
            f"cannot create the directory {_quoted(directory)} for the cookie file: "
            f"{exc.strerror or exc}"
        ) from exc
    data = (secrets.token_hex(COOKIE_BYTES) + "\n").encode("ascii")
    temporary = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp"
    made = False
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        made = True
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        # Atomic and exclusive: fails if the name exists, so the first
        # process to link wins and the others read its cookie.
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    except OSError as exc:
        raise CookieError(
            f"cannot create the cookie file {_quoted(path)}: {exc.strerror or exc}"
        ) from exc
    finally:
        if made:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
    with contextlib.suppress(OSError):  # make the new name durable
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
