"""The annotation store and API on PostgreSQL: same results as SQLite, and racing duplicate submissions store one label.

The server: $RLHFKIT_TEST_POSTGRES_URL (any SQLAlchemy / libpq URL of a server we may create databases on), else a
throwaway cluster started here with initdb + pg_ctl in a temporary folder (as the `postgres` user when running as
root, since PostgreSQL refuses to run as root). Without either, the tests skip and say why.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest

psycopg = pytest.importorskip("psycopg", reason="psycopg (PostgreSQL driver) is not installed")

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from rlhfkit.feedback.app import create_app  # noqa: E402
from rlhfkit.feedback.store import AnswerConflict, Store, normalize_url  # noqa: E402

ENV = "RLHFKIT_TEST_POSTGRES_URL"
ADMIN = "postgres-admin-token-of-32-characters-or-more"


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _throwaway_cluster() -> tuple[str, Callable[[], None]]:
    """initdb + pg_ctl start on a free port; returns (server URL, stop)."""
    initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip(f"no PostgreSQL server: ${ENV} is unset and initdb / pg_ctl are not installed")
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:  # postgres will not run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("no PostgreSQL server: running as root and there is no 'postgres' user to run one as")
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("no PostgreSQL server: running as root without runuser to start one as 'postgres'")
        prefix = [runuser, "-u", "postgres", "--"]
    root = tempfile.mkdtemp(prefix="rlhfkit-pg-")
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, log, port = os.path.join(root, "data"), os.path.join(root, "log"), _free_port()

    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(prefix + cmd, capture_output=True, text=True, timeout=120)

    init = run([initdb, "-D", data, "-A", "trust", "-U", "rlhfkit", "--no-sync", "-E", "UTF8"])
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"no PostgreSQL server: initdb failed: {(init.stderr or init.stdout).strip()[-300:]}")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    start = run([pg_ctl, "-D", data, "-o", options, "-l", log, "-w", "-t", "60", "start"])
    if start.returncode != 0:
        detail = open(log).read()[-300:] if os.path.exists(log) else start.stderr
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"no PostgreSQL server: pg_ctl start failed: {detail.strip()}")

    def stop() -> None:
        run([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"])
        shutil.rmtree(root, ignore_errors=True)

    return f"postgresql://rlhfkit@127.0.0.1:{port}/postgres", stop


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A fresh, empty database on the server; dropped afterwards."""
    server, stop = os.environ.get(ENV), None
    if not server:
        server, stop = _throwaway_cluster()
    url = make_url(normalize_url(server))
    libpq = url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"rlhfkit_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(libpq, autocommit=True, connect_timeout=10) as con:
            con.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as e:
        if stop:
            stop()
        pytest.skip(f"no PostgreSQL server: cannot create a test database on {url!r}: {' '.join(str(e).split())[:200]}")
    try:
        yield url.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
    finally:
        try:
            with psycopg.connect(libpq, autocommit=True, connect_timeout=10) as con:
                con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            if stop:
                stop()


def _fill(store: Store, campaign: str) -> None:
    """Three raters; each answers so that its canonical preference is a fixed function of the item."""
    toks = {n: store.add_rater(f"{campaign}-{n}") for n in ("a", "b", "c")}
    items = [
        {"prompt": f"p{i}", "responses": [f"x{i}", f"y{i}"], **({"gold": "0"} if i == 0 else {})} for i in range(8)
    ]
    store.create_campaign(campaign, items, raters_per_item=3, dimensions=["helpful"], seed=11)
    for n, tok in toks.items():
        rid = store.rater_by_token(tok).id
        for q in store.rater_queue(rid, campaign):
            view = store.assignment_view(rid, q["id"])
            i = int(view["prompt"][1:])
            winner = f"x{i}" if (i + "abc".index(n)) % 3 else f"y{i}"  # raters disagree now and then
            shown = "AB"[view["responses"].index(winner)]
            store.submit(rid, q["id"], {"choice": shown, "strength": 1 + i % 3, "dimensions": {"helpful": shown}})


def test_postgres_matches_sqlite(pg_url: str) -> None:
    pg, lite = Store(pg_url), Store("sqlite://")
    assert pg.engine.dialect.name == "postgresql"
    _fill(pg, "same")
    _fill(lite, "same")
    expected = {"labelled_items": 8, "total_items": 8, "labels": 24, "required_labels": 24}
    assert pg.progress("same") == expected and lite.progress("same") == expected
    for method in ("majority", "median", "none"):
        assert pg.export("same", method) == lite.export("same", method)
    strip = lambda labels: [{k: v for k, v in x.items() if k not in ("created_at", "seconds")} for x in labels]  # noqa: E731
    assert strip(pg.labels("same")) == strip(lite.labels("same"))
    assert pg.quality("same") == lite.quality("same")
    pg.close()


def test_postgres_racing_duplicate_submissions_store_one_label(pg_url: str) -> None:
    store = Store(pg_url)
    token = store.add_rater("racer")
    store.create_campaign("race", [{"prompt": "p", "responses": ["a", "b"]}], raters=["racer"])
    rid = store.rater_by_token(token).id
    (q,) = store.rater_queue(rid, "race")
    barrier = threading.Barrier(8)
    results: list[tuple[dict, bool]] = []
    conflicts: list[AnswerConflict] = []

    def submit(choice: str) -> None:
        barrier.wait()
        try:
            results.append(store.submit(rid, q["id"], {"choice": choice, "strength": 2}))
        except AnswerConflict as e:  # the other answer won the race: it stands
            conflicts.append(e)

    threads = [threading.Thread(target=submit, args=("AB"[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4 and len(conflicts) == 4  # the winner's 3 retries are the same answer; 4 differ
    assert sum(created for _, created in results) == 1  # exactly one insert won; the UNIQUE constraint stopped the rest
    # everyone got the stored label back: as the same answer, or as the one that stands
    assert len({label["choice"] for label, _ in results} | {e.label["choice"] for e in conflicts}) == 1
    assert store.progress("race")["labels"] == 1
    store.close()


def test_postgres_api(pg_url: str) -> None:
    store = Store(pg_url)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    client = TestClient(create_app(store, ADMIN))
    r = client.post("/api/admin/raters", json={"name": "web"}, headers=admin)
    token = r.json()["token"]
    r = client.post(
        "/api/admin/campaigns",
        headers=admin,
        json={"name": "web", "items": [{"prompt": "p", "responses": ["<b>a</b>", "b"]}], "raters": ["web"]},
    )
    assert r.status_code == 201, r.text
    h = {"Authorization": f"Bearer {token}"}
    view = client.get("/api/campaigns/web/next", headers=h).json()["assignment"]
    assert "<b>a</b>" in view["responses"]
    assert client.post(f"/api/assignments/{view['id']}/label", headers=h, json={"choice": "tie"}).status_code == 201
    assert client.post(f"/api/assignments/{view['id']}/label", headers=h, json={"choice": "tie"}).status_code == 200
    assert (
        client.post(f"/api/assignments/{view['id']}/label", headers=h, json={"choice": "A", "strength": 2}).status_code
        == 409
    )
    assert client.get("/api/admin/campaigns", headers=h).status_code == 403
    assert client.get("/api/me", headers={"Authorization": "Bearer nope"}).status_code == 401
    rows = client.get("/api/admin/campaigns/web/export", headers=admin).json()
    assert rows == [
        {"prompt": "p", "chosen": "<b>a</b>", "rejected": "b", "tie": True, "strength": 0.0, "rater": "adjudicated",
         "confidence": 1.0}
    ]  # fmt: skip
    store.close()
