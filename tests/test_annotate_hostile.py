"""The annotation server under hostile load: oversized and slow bodies against a real uvicorn server on raw sockets
(a body over the limit is refused from its headers, and nothing is read before the token is checked), error
responses that echo nothing and keep the security headers, out-of-range ids, the admin token's sources and length,
and the database file's mode and durability settings."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rlhfkit.feedback import annotate_cli
from rlhfkit.feedback.app import MAX_ADMIN_BODY, MAX_BODY, create_app
from rlhfkit.feedback.store import Store
from tests.annotate_server import Server

ADMIN = "hostile-admin-token-of-32-characters-or-more"
PROMPT_S = 10.0  # an answer that does not wait for the body comes in milliseconds (seconds on a loaded machine); a
# server waiting for the body never answers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Store, str, int]]:
    store = Store(tmp_path_factory.mktemp("hostile") / "ann.db")
    token = store.add_rater("ann")
    store.create_campaign("c", [{"prompt": "p", "responses": ["a", "b"]}])
    assignment = store.rater_queue(store.rater_by_token(token).id, "c")[0]["id"]
    with Server(create_app(store, ADMIN)) as server:
        yield server, store, token, assignment
    store.close()


def exchange(port: int, head: str, chunks: Iterator[bytes] | list[bytes] = ()) -> tuple[int, dict[str, str], bytes]:
    """Send a request head and body chunks (in a thread, so a server that answers early is heard at once); return the
    response's status, headers and body. Fails when no full response arrives within PROMPT_S seconds."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=PROMPT_S)

    def send() -> None:
        try:
            sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:  # the server answered and closed while the body was still coming: expected
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    data = b""
    deadline = time.monotonic() + PROMPT_S
    try:
        while time.monotonic() < deadline:
            try:
                part = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not part:
                break
            data += part
            if b"\r\n\r\n" in data:
                top, _, body = data.partition(b"\r\n\r\n")
                length = [ln for ln in top.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
                if length and len(body) >= int(length[0].split(b":")[1]):
                    break
    finally:
        sock.close()
    assert b"\r\n\r\n" in data, f"no response within {PROMPT_S} s: the server is waiting for the body ({data[:200]!r})"
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def head(method: str, path: str, *extra: str) -> str:
    return "\n".join([f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", *extra, ""])


def secure(headers: dict[str, str]) -> bool:
    return "default-src 'none'" in headers.get("content-security-policy", "") and headers["x-frame-options"] == "DENY"


# ---------------------------------------------------------------- request size and order of checks


def test_a_declared_60mb_body_is_413_before_a_byte_is_read(served) -> None:
    server, store, token, assignment = served
    for path, auth in [
        (f"/api/assignments/{assignment}/label", ""),  # no token
        (f"/api/assignments/{assignment}/label", f"Authorization: Bearer {token}"),
        ("/api/admin/campaigns", f"Authorization: Bearer {ADMIN}"),
    ]:
        t0 = time.monotonic()
        # 60 MB announced, 9 bytes sent: a server that reads the body before answering would wait forever
        status, headers, body = exchange(
            server.port, head("POST", path, "Content-Length: 60000000", *[a for a in [auth] if a]), [b'{"choice"']
        )
        assert status == 413 and time.monotonic() - t0 < PROMPT_S, (path, status, body)
        assert "limit" in json.loads(body)["detail"] and secure(headers)
    assert store.progress("c")["labels"] == 0
    # a declared size under the limit is not refused
    status, _, _ = exchange(
        server.port,
        head("POST", f"/api/assignments/{assignment}/label", f"Authorization: Bearer {token}", "Content-Length: 2"),
        [b"{}"],
    )
    assert status == 422
    assert MAX_BODY < 60_000_000 and MAX_ADMIN_BODY < 60_000_000


def test_a_chunked_body_past_the_limit_is_413(served) -> None:
    server, store, token, assignment = served
    piece = b" " * 65536
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * (2 * MAX_BODY // len(piece)) + [b"0\r\n\r\n"]
    status, headers, body = exchange(
        server.port,
        head(
            "POST",
            f"/api/assignments/{assignment}/label",
            f"Authorization: Bearer {token}",
            "Transfer-Encoding: chunked",
        ),
        chunks,
    )
    assert status == 413 and secure(headers), body
    assert store.progress("c")["labels"] == 0
    # a chunked body within the limit is read as usual
    answer = json.dumps({"choice": "tie"}).encode()
    status, _, body = exchange(
        server.port,
        head(
            "POST",
            f"/api/assignments/{assignment}/label",
            f"Authorization: Bearer {token}",
            "Transfer-Encoding: chunked",
        ),
        [b"%x\r\n%s\r\n0\r\n\r\n" % (len(answer), answer)],
    )
    assert status == 201, body
    assert store.progress("c")["labels"] == 1


def test_the_token_is_checked_before_the_body_is_read(served) -> None:
    """A body the server would have to wait for (declared, or chunked and never finished): without a valid token the
    answer comes at once, so a tokenless client cannot make the server hold megabytes."""
    server, store, token, assignment = served
    cases = [
        (f"/api/assignments/{assignment}/label", [], 401),
        (f"/api/assignments/{assignment}/label", ["Authorization: Bearer not-a-token"], 401),
        ("/api/admin/campaigns", [], 401),
        ("/api/admin/campaigns", [f"Authorization: Bearer {token}"], 403),  # a rater on an admin endpoint
        ("/api/admin/raters", [f"Authorization: Bearer {token}"], 403),
    ]
    for path, auth, want in cases:
        size = MAX_BODY - 10 if path.startswith("/api/assignments") else 10_000_000
        status, headers, _ = exchange(server.port, head("POST", path, *auth, f"Content-Length: {size}"), [b'{"na'])
        assert status == want and secure(headers), (path, auth, status)
        status, _, _ = exchange(
            server.port, head("POST", path, *auth, "Transfer-Encoding: chunked"), [b'4\r\n{"na\r\n']
        )
        assert status == want, (path, auth, status)


def test_a_422_never_echoes_the_body() -> None:
    store = Store("sqlite://")
    token = store.add_rater("ann")
    store.create_campaign("c", [{"prompt": "p", "responses": ["a", "b"]}])
    client = TestClient(create_app(store, ADMIN))
    a = client.get("/api/campaigns/c/next", headers=bearer(token)).json()["assignment"]["id"]
    big = "x" * 900_000  # under the 1 MiB limit
    for content in [
        json.dumps({"choice": "A", "strength": 1, "reason": big}),  # over the reason's 10,000 characters
        json.dumps({big: 1}),  # an unknown field named by a huge key
        json.dumps(big),  # not an object at all
        json.dumps({"choice": big}),
        '{"choice": "' + big,  # broken JSON
    ]:
        r = client.post(f"/api/assignments/{a}/label", headers=bearer(token), content=content)
        assert r.status_code == 422 and len(r.content) < 2_000, (r.status_code, len(r.content))
        assert r.json()["detail"] and r.headers["x-content-type-options"] == "nosniff"
    r = client.post(f"/api/assignments/{a}/label", headers=bearer(token), json={"choice": "A", "hack": 1})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "hack"]
    big_admin = client.post(
        "/api/admin/raters", headers=bearer(ADMIN), content=json.dumps({"name": 1, "junk": "y" * 500_000})
    )
    assert big_admin.status_code == 422 and len(big_admin.content) < 2_000
    assert store.progress("c")["labels"] == 0


# ---------------------------------------------------------------- ids, numbers and crashes


def test_out_of_range_ids_are_404_with_the_security_headers() -> None:
    store = Store("sqlite://")
    token = store.add_rater("ann")
    store.create_campaign("c", [{"prompt": "p", "responses": ["a", "b"]}])
    client = TestClient(create_app(store, ADMIN))
    for huge in (2**63, 10**30, 10**200):
        r = client.get(f"/api/assignments/{huge}", headers=bearer(token))
        assert r.status_code == 404 and secure(r.headers) and "no assignment" in r.json()["detail"]
        r = client.post(f"/api/assignments/{huge}/label", headers=bearer(token), json={"choice": "tie"})
        assert r.status_code == 404 and secure(r.headers)
    a = client.get("/api/campaigns/c/next", headers=bearer(token)).json()["assignment"]["id"]
    r = client.post(
        f"/api/assignments/{a}/label", headers=bearer(token), content='{"choice": "tie", "seconds": 1' + "0" * 400 + "}"
    )
    assert r.status_code == 422 and "seconds" in r.text and len(r.content) < 2_000
    body = {"name": "big-seed", "items": [{"prompt": "p", "responses": ["a", "b"]}], "seed": 2**70}
    r = client.post("/api/admin/campaigns", headers=bearer(ADMIN), json=body)
    assert r.status_code == 422 and "seed" in r.text and secure(r.headers)


def test_an_unexpected_error_is_a_bare_500_with_the_security_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store("sqlite://")
    token = store.add_rater("ann")
    client = TestClient(create_app(store, ADMIN), raise_server_exceptions=False)

    def broken(rater_id: int) -> list:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(store, "rater_campaigns", broken)
    r = client.get("/api/me", headers=bearer(token))
    assert r.status_code == 500 and r.json() == {"detail": "internal server error"} and secure(r.headers)
    assert "secret" not in r.text and "Traceback" not in r.text


# ---------------------------------------------------------------- the admin token


def serve_args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"admin_token": None, "admin_token_file": None, **kw})


def test_admin_token_from_env_or_file_with_a_minimum_length(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    long = "t" * 40
    monkeypatch.setenv(annotate_cli.ADMIN_ENV, f"  {long}\n")
    assert annotate_cli._admin_token(serve_args()) == long
    token_file = tmp_path / "admin-token"
    token_file.write_text(long.upper() + "\n")
    token_file.chmod(0o600)
    assert annotate_cli._admin_token(serve_args(admin_token_file=str(token_file))) == long.upper()
    assert capsys.readouterr().err == ""
    token_file.chmod(0o644)
    annotate_cli._admin_token(serve_args(admin_token_file=str(token_file)))
    assert "readable by other users" in capsys.readouterr().err
    # a flag works but warns that `ps` shows it
    assert annotate_cli._admin_token(serve_args(admin_token=long)) == long
    assert "visible to every user" in capsys.readouterr().err
    # too short, from any source: refused before the server starts (exit 2, one line)
    db = str(tmp_path / "a.db")
    monkeypatch.setenv(annotate_cli.ADMIN_ENV, "short")
    assert annotate_cli.main(["serve", "--db", db]) == 2
    err = capsys.readouterr().err
    assert "admin token from $RLHFKIT_ADMIN_TOKEN has 5 characters; use at least 32" in err
    token_file.write_text("tiny\n")
    assert annotate_cli.main(["serve", "--db", db, "--admin-token-file", str(token_file)]) == 2
    assert f"admin token from {token_file} has 4 characters" in capsys.readouterr().err
    token_file.write_text("\n")
    assert annotate_cli.main(["serve", "--db", db, "--admin-token-file", str(token_file)]) == 2
    assert "empty admin token file" in capsys.readouterr().err
    # unset: one is generated, long enough
    monkeypatch.delenv(annotate_cli.ADMIN_ENV)
    generated = annotate_cli._admin_token(serve_args())
    assert len(generated) >= 32 and generated in capsys.readouterr().out
    with pytest.raises(ValueError, match="at least 32 characters"):
        create_app(Store("sqlite://"), "admin")


# ---------------------------------------------------------------- the database file


def test_database_files_are_private_and_commits_fsynced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old = os.umask(0o022)  # the usual umask: without care, files come out world-readable
    try:
        db = tmp_path / "ann.db"
        store = Store(db)
        token = store.add_rater("ann")
        store.create_campaign("c", [{"prompt": "p", "responses": ["a", "b"]}])
        rid = store.rater_by_token(token).id
        store.submit(rid, store.rater_queue(rid, "c")[0]["id"], {"choice": "tie"})
        files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
        assert all(f.exists() for f in files)
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        with store.engine.connect() as con:
            assert con.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert con.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        store.close()
        # an existing database that others can read: said, not silently changed
        shared = tmp_path / "shared.db"
        shared.touch(mode=0o644)
        shared.chmod(0o644)
        with caplog.at_level(logging.WARNING, logger="rlhfkit.feedback.store"):
            Store(shared).close()
        assert "readable by other users" in caplog.text and "chmod 600" in caplog.text
    finally:
        os.umask(old)
