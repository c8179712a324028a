"""Attacks on the PostgreSQL hub store, against a real PostgreSQL 15: two hubs racing for one name or for creating
the mesh (the loser must get a clear refusal, never a second record or a mixed mesh), and the store's password
leaking into an error or a log line (wrong password, outage, reconnect)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from conftest import PgDb
from integration.test_store_pg import ep, open_store, run, until
from ztm.errors import Conflict, Unavailable, ZtmError
from ztm.hub.store_pg import PgStore
from ztm.hub.storeurl import parse_store_url


def test_create_meta_race_has_one_winner(pg_url: PgDb) -> None:
    async def main() -> None:
        a, b = await open_store(pg_url), await open_store(pg_url)
        try:
            for _ in range(5):
                got_a, got_b = await asyncio.gather(
                    a.create_meta({"ca_cert": "A", "mesh_id": "ma", "ca_key": "ka"}),
                    b.create_meta({"ca_cert": "B", "mesh_id": "mb", "ca_key": "kb"}),
                )
                assert got_a == got_b
                assert got_a in ({"ca_cert": "A", "mesh_id": "ma", "ca_key": "ka"},
                                 {"ca_cert": "B", "mesh_id": "mb", "ca_key": "kb"})  # fmt: skip
        finally:
            await a.close()
            await b.close()

    run(main())


def test_same_name_enrolment_race_gives_one_conflict(pg_url: PgDb) -> None:
    async def main() -> None:
        a, b = await open_store(pg_url), await open_store(pg_url)
        try:
            for i in range(5):
                name = f"web-{i}"
                results = await asyncio.gather(
                    a.enroll_endpoint(ep(f"a{i}", name, "alice"), replaces=[]),
                    b.enroll_endpoint(ep(f"b{i}", name, "bob"), replaces=[]),
                    return_exceptions=True,
                )
                errors = [r for r in results if isinstance(r, BaseException)]
                assert len(errors) == 1, results
                assert isinstance(errors[0], Conflict)
                winner = "bob" if results[0] is errors[0] else "alice"
                assert (
                    errors[0].message == f"endpoint name '{name}' is taken by user '{winner}'; join with another --as"
                )
                assert [e.user for e in await a.endpoints() if e.name == name] == [winner]
            with pytest.raises(Conflict):  # a rename onto a taken name, too
                await a.save_endpoint(ep("a0", "web-1"))
        finally:
            await a.close()
            await b.close()

    run(main())


def test_the_password_never_appears_in_errors_or_logs(pg_url: PgDb, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = pg_url.server
    url = parse_store_url(pg_url.url)
    wrong = "Wr0ng-" + pg_url.password[::-1]
    messages: list[str] = []

    async def main() -> None:
        for password in (wrong, pg_url.password + "x"):
            try:
                await PgStore.open(url, password)
            except ZtmError as exc:
                messages.append(exc.message)
        s = await open_store(pg_url)
        try:
            await asyncio.to_thread(server.stop)
            for _ in range(3):
                try:
                    await s.get_meta()
                except Unavailable as exc:
                    messages.append(exc.message)
            messages.append(s.problem)
            await asyncio.to_thread(server.start)

            async def answers() -> bool:
                await s.get_meta()
                return True

            await until(answers, 10, "the store to answer again")
        finally:
            if not server.running:
                await asyncio.to_thread(server.start)
            await s.close()

    run(main())
    assert len(messages) >= 3 and all(messages)
    text = "\n".join(messages) + "\n" + caplog.text + "\n" + repr([r.__dict__ for r in caplog.records])
    for secret in (pg_url.password, wrong):
        assert secret not in text
    assert "unavailable" in caplog.text  # the outage itself was logged (without the password)
