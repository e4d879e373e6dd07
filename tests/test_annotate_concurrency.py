"""50 raters submit 2,000 labels concurrently to a real uvicorn server (SQLite file) that is killed and restarted
midway; clients retry on connection errors. Afterwards: exactly 2,000 labels, none lost, none duplicated, each the
answer its client sent (submission is idempotent: one label per assignment, enforced by a UNIQUE constraint)."""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")

from rlhfkit.feedback.store import Store  # noqa: E402

N_RATERS, N_ITEMS, PER_ITEM = 50, 1000, 2  # 2,000 labels, 40 per rater
ADMIN = "concurrency-admin-token-with-32-characters"
DEADLINE_S = 120  # a hard stop for a broken run; a healthy one takes well under 40 s


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The server runs `rlhfkit annotate serve` (annotate_cli.main) in its own process. It is launched "warm": the process
# imports everything first, then waits for a go line on stdin, so a restart costs a process start without the imports.
STANDBY = """
import sys
from pathlib import Path
import uvicorn
from rlhfkit.feedback import annotate_cli, app, store
Path(sys.argv[1]).touch()
sys.stdin.readline()
sys.exit(annotate_cli.main(sys.argv[2:]))
"""


class ServerProcess:
    def __init__(self, db: Path, port: int, log: Path, name: str) -> None:
        self.port, self.log, self.ready = port, log, log.with_name(f"{name}.ready")
        serve = ["serve", "--db", f"sqlite:///{db}", "--port", str(port)]
        cmd = [sys.executable, "-c", STANDBY, str(self.ready), *serve, "--log-level", "warning"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RLHFKIT_ADMIN_TOKEN": ADMIN}  # not in `ps`
        with log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, env=env)

    def start(self) -> None:
        """Let the warm process serve; returns once it answers HTTP."""
        deadline = time.monotonic() + 90
        while not self.ready.exists():
            self._check(deadline)
            time.sleep(0.02)
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/static/style.css", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            self._check(deadline)
            time.sleep(0.02)

    def _check(self, deadline: float) -> None:
        if self.proc.poll() is not None or time.monotonic() > deadline:
            self.kill()
            raise RuntimeError(f"annotation server did not start:\n{self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, requests in flight are cut off."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def count_labels(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
        return con.execute("SELECT count(*) FROM annotate_labels").fetchone()[0]


class Rater(threading.Thread):
    """One rater: fetch the queue, then submit every assignment, retrying each request on connection errors."""

    def __init__(self, url: str, token: str, seed: int) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.rng = url, token, random.Random(seed)
        self.sent: dict[int, dict] = {}  # assignment id -> the body this rater sent
        self.statuses: list[int] = []
        self.transport_errors = 0
        self.error: BaseException | None = None

    def request(self, client: httpx.Client, method: str, path: str, **kwargs) -> httpx.Response:
        stop, attempt = time.monotonic() + DEADLINE_S, 0
        while True:
            try:
                r = client.request(method, path, **kwargs)
                if r.status_code < 500:
                    return r
            except httpx.TransportError:  # refused while the server is down, reset when it was killed mid-request
                self.transport_errors += 1
            if time.monotonic() > stop:
                raise TimeoutError(f"{method} {path}: no answer within {DEADLINE_S} s")
            attempt += 1
            time.sleep(min(0.4, 0.01 * 2**attempt) * (0.5 + self.rng.random()))  # jittered exponential backoff

    def run(self) -> None:
        try:
            headers = {"Authorization": f"Bearer {self.token}"}
            with httpx.Client(base_url=self.url, headers=headers, timeout=10) as client:
                queue = self.request(client, "GET", "/api/campaigns/load/assignments").json()
                for entry in queue:
                    choice = self.rng.choice(["A", "B", "tie"])
                    body = (
                        {"choice": choice} if choice == "tie" else {"choice": choice, "strength": 1 + entry["id"] % 3}
                    )
                    self.sent[entry["id"]] = body
                    r = self.request(client, "POST", f"/api/assignments/{entry['id']}/label", json=body)
                    assert r.status_code in (200, 201), r.text
                    assert r.json()["label"]["choice"] == choice  # a retry gets back the label it stored first
                    self.statuses.append(r.status_code)
        except BaseException as e:  # reported by the test thread
            self.error = e


def test_concurrent_raters_survive_a_server_restart(tmp_path: Path) -> None:
    t0 = time.monotonic()
    db, log = tmp_path / "load.db", tmp_path / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = ServerProcess(db, port, log, "first")  # imports while the database is filled
    store = Store(db)
    tokens = [store.add_rater(f"rater{i:02d}") for i in range(N_RATERS)]
    items = [{"prompt": f"prompt {i}", "responses": [f"a {i}", f"b {i}"]} for i in range(N_ITEMS)]
    store.create_campaign("load", items, raters_per_item=PER_ITEM, seed=7)
    store.close()
    raters = [Rater(url, tok, seed=i) for i, tok in enumerate(tokens)]
    t_setup = time.monotonic()
    second = None
    try:
        first.start()
        t_started = time.monotonic()
        second = ServerProcess(db, port, log, "second")  # imports while the first serves, then waits for the restart
        for r in raters:
            r.start()
        # stop the server hard once about 40% of the labels are in
        stop = time.monotonic() + DEADLINE_S
        while count_labels(db) < 0.4 * N_ITEMS * PER_ITEM:
            assert time.monotonic() < stop and first.proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.02)
        t_kill = time.monotonic()
        first.kill()
        at_kill = count_labels(db)
        time.sleep(0.5)  # clients hit refused connections meanwhile
        second.start()
        t_restarted = time.monotonic()
        for r in raters:
            r.join(DEADLINE_S)
        t_end = time.monotonic()
    finally:
        first.kill()
        if second is not None:
            second.kill()
    for r in raters:
        assert not r.is_alive(), "a rater thread did not finish"
        if r.error is not None:
            raise r.error

    total = N_ITEMS * PER_ITEM
    assert 0 < at_kill < total  # the restart really happened midway
    assert sum(r.transport_errors for r in raters) > 0  # and clients felt it
    assert sum(len(r.sent) for r in raters) == total
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM annotate_labels").fetchone()[0] == total
        assert con.execute("SELECT count(DISTINCT assignment_id) FROM annotate_labels").fetchone()[0] == total
        unlabelled = con.execute(
            "SELECT count(*) FROM annotate_assignments a LEFT JOIN annotate_labels l ON l.assignment_id = a.id "
            "WHERE l.id IS NULL"
        ).fetchone()[0]
        assert unlabelled == 0
    store = Store(db)
    assert store.progress("load") == {
        "labelled_items": N_ITEMS,
        "total_items": N_ITEMS,
        "labels": total,
        "required_labels": total,
    }
    # every stored label is the answer its client sent, mapped to canonical terms through the recorded display order
    sent = {aid: body for r in raters for aid, body in r.sent.items()}
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT l.assignment_id, l.choice, l.strength, l.shown, a.display_order FROM annotate_labels l "
            "JOIN annotate_assignments a ON a.id = l.assignment_id"
        ).fetchall()
    assert {row[0] for row in rows} == set(sent)
    for aid, choice, strength, shown, order in rows:
        body, order = sent[aid], json.loads(order)
        assert json.loads(shown)["choice"] == body["choice"]
        assert choice == ("tie" if body["choice"] == "tie" else str(order["AB".index(body["choice"])]))
        assert strength == body.get("strength", 0)
    created = sum(s == 201 for r in raters for s in r.statuses)
    assert created <= total  # 200 = a retry whose first attempt had been stored before the response was lost
    store.close()
    print(  # visible with -s: where the time went
        f"\n{total} labels, {N_RATERS} raters: setup {t_setup - t0:.1f} s, server up {t_started - t_setup:.1f} s, "
        f"labelling to the kill {t_kill - t_started:.1f} s ({at_kill} labels), restart {t_restarted - t_kill:.1f} s, "
        f"the rest {t_end - t_restarted:.1f} s; {sum(r.transport_errors for r in raters)} transport errors retried, "
        f"{total - created} idempotent replays"
    )
