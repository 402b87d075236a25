"""Bad configuration and unreachable databases: a clear error at once, never a hang."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy
import trio

from trio_gm import StoreConfigError, StoreError, StoreUnavailable
from trio_gm.store import open_store

SECRET = "s3cr3t-pw"


async def open_and_use(url: str, **kwargs: object) -> None:
    with trio.fail_after(8):
        async with open_store(url, **kwargs) as store:  # type: ignore[arg-type]
            await store.create_tables()


def assert_masked(error: BaseException, shows: str) -> None:
    message = str(error)
    assert SECRET not in message
    assert shows in message, message
    assert error.__cause__ is not None or isinstance(error, StoreConfigError)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("not a url", "malformed store URL 'not a url'"),
        (f"://user:{SECRET}@host/db", "malformed store URL"),
        (f"nosuchdb://user:{SECRET}@localhost/db", "unsupported database 'nosuchdb'"),
        (f"mysql+pymysql://user:{SECRET}@localhost/db", "unsupported database 'mysql'"),
        (f"postgresql+nodriver://user:{SECRET}@localhost/db", "unknown driver 'nodriver'"),
        (f"postgresql+psycopg2://user:{SECRET}@localhost/db", "is not installed"),
        (f"postgresql+pg8000://user:{SECRET}@localhost/db", "pg8000"),
    ],
)
async def test_a_bad_url_is_a_config_error(url: str, says: str) -> None:
    with pytest.raises(StoreConfigError) as info:
        await open_and_use(url)
    assert_masked(info.value, says)
    if "://user:" in url and not url.startswith("://"):
        assert "user:***@localhost" in str(info.value)


async def test_a_schema_on_sqlite_is_a_config_error() -> None:
    with pytest.raises(StoreConfigError, match="schema='x' needs PostgreSQL"):
        await open_and_use("sqlite://", schema="x")


async def test_a_sqlite_file_in_a_missing_directory_is_unavailable(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'gm.db'}"
    with pytest.raises(StoreUnavailable) as info:
        await open_and_use(url)
    assert_masked(info.value, f"cannot connect to {url}")


def with_password(url: str, **changes: object) -> str:
    parsed = sqlalchemy.make_url(url).set(password=SECRET, **changes)  # type: ignore[arg-type]
    return parsed.render_as_string(hide_password=False)


@pytest.mark.postgres
async def test_an_unreachable_postgresql_port_fails_fast(postgres_url: str) -> None:
    url = with_password(postgres_url, host="127.0.0.1", port=1)
    with pytest.raises(StoreUnavailable) as info:
        await open_and_use(url)
    assert_masked(info.value, "cannot connect to postgresql+psycopg://")
    assert "127.0.0.1:1/" in str(info.value)
    assert ":***@" in str(info.value)
    assert isinstance(info.value.__cause__, sqlalchemy.exc.OperationalError)


@pytest.mark.postgres
async def test_a_missing_postgresql_database_fails_fast(postgres_url: str) -> None:
    name = f"trio_gm_missing_{uuid.uuid4().hex}"
    url = with_password(postgres_url, database=name)
    with pytest.raises(StoreUnavailable) as info:
        await open_and_use(url)
    assert_masked(info.value, f"/{name}")
    assert "does not exist" in str(info.value)


@pytest.mark.postgres
async def test_an_unknown_role_is_unavailable(postgres_url: str) -> None:
    url = with_password(postgres_url, username=f"nobody_{uuid.uuid4().hex[:8]}")
    with pytest.raises(StoreUnavailable) as info:
        await open_and_use(url)
    assert_masked(info.value, "cannot connect to")


def test_store_errors_share_a_base() -> None:
    for error in (StoreConfigError, StoreUnavailable):
        assert issubclass(error, StoreError)
