"""The annotation web app: a FastAPI JSON API over :class:`~rlhfkit.feedback.store.Store` and one static page.

Authentication is ``Authorization: Bearer <token>`` on every API call: a rater's token (issued by ``add-rater``, stored
as its sha256) or the admin token (campaign management). No or an unknown token -> 401; a valid token reaching for what
it may not (another rater's assignment, an admin endpoint with a rater token) -> 403.

Rater endpoints                                   Admin endpoints (admin token)
  GET  /api/me                                      GET/POST /api/admin/raters (POST: name, attributes)
                                                    GET  /api/admin/rater-attributes
                                                    PUT  /api/admin/raters/{name}/attributes
  GET  /api/campaigns/{name}/next                   GET/POST /api/admin/campaigns
  GET  /api/campaigns/{name}/assignments            GET  /api/admin/campaigns/{name}
  GET  /api/assignments/{id}                        GET  /api/admin/campaigns/{name}/labels
  POST /api/assignments/{id}/label                  GET  /api/admin/campaigns/{name}/export?adjudication=&dimension=&partial=
                                                    GET  /api/admin/campaigns/{name}/quality?adjudication=

Hostile clients: a request body over ``max_body`` bytes (``max_admin_body`` under /api/admin/) is answered 413 from its
Content-Length header before a byte of it is read, and a chunked body is cut off at the limit; bodies are read and
parsed only after the token is checked, so a client without a valid token cannot make the server hold a body; a 422
never echoes the input back; ids beyond 64 bits are 404s; every response, errors and 500s included, carries the
security headers. A different answer to an answered assignment is a 409 whose body holds the earlier answer, which
stands (labels are final; the page says so).

The page (``static/``) renders model text with ``textContent`` only, and every response carries a
Content-Security-Policy that allows scripts from this origin's files only (no inline script, no eval), so a response
such as ``<img src=x onerror=...>`` shows as text and can run nothing.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError
from starlette.requests import ClientDisconnect

from rlhfkit.feedback.store import (
    AnswerConflict,
    ForbiddenError,
    IncompleteError,
    NotFoundError,
    RaterInfo,
    Store,
    hash_token,
)

STATIC = Path(__file__).parent / "static"

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]

MAX_BODY = 1 << 20  # rater API: an answer is at most a 10,000-character reason and a few fields
MAX_ADMIN_BODY = 32 << 20  # campaign creation over the API carries every item
MIN_ADMIN_TOKEN = 32  # characters; generated tokens have 43 (256 bits)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a body without a (truthful) Content-Length passes its limit."""


async def _send_json(send: Callable, status: int, content: dict[str, Any], close: bool = False) -> None:
    body = JSONResponse(content).body
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Pure ASGI middleware: 413 for a body over the limit. A Content-Length over it is refused before the app runs
    (nothing is read: uvicorn stops reading the socket while the app does not ask for the body); a chunked body is
    counted as it arrives and refused when it passes the limit."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY, max_admin_body: int = MAX_ADMIN_BODY) -> None:
        self.app = app
        self.max_body = max_body
        self.max_admin_body = max_admin_body

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_admin_body if scope["path"].startswith("/api/admin/") else self.max_body
        too_large = {"detail": f"request body too large: the limit is {limit} bytes"}
        lengths = [v for k, v in scope.get("headers", []) if k.lower() == b"content-length"]
        if lengths:
            try:
                declared = int(lengths[0])
            except ValueError:
                await _send_json(send, 400, {"detail": "bad Content-Length header"}, close=True)
                return
            if declared > limit:
                await _send_json(send, 413, too_large, close=True)
                return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await _send_json(send, 413, too_large, close=True)


class SecurityHeaders:
    """Pure ASGI middleware (no per-request task overhead): adds SECURITY_HEADERS to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in SECURITY_HEADERS if k not in names
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


Choice = Literal["A", "B", "tie"]


class LabelIn(BaseModel):
    """A rater's answer, in display terms. Pairwise: choice, strength, dimensions, reason. Ranking: order, reason."""

    model_config = ConfigDict(extra="forbid")
    choice: Choice | None = None
    strength: StrictInt | None = None
    dimensions: dict[StrictStr, Choice] | None = None
    order: list[StrictInt] | None = None
    reason: StrictStr | None = Field(default=None, max_length=10_000)
    seconds: StrictFloat | StrictInt | None = None


class RaterIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    attributes: dict[StrictStr, StrictStr] | None = None
    """Optional audit attributes ({"age": "18-29"}): admin data, never sent to any rater."""


class AttributesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attributes: dict[StrictStr, StrictStr]


class CampaignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: StrictStr
    items: list[dict[str, Any]]
    kind: Literal["pairwise", "ranking"] = "pairwise"
    raters_per_item: StrictInt = 1
    rubric: StrictStr = ""
    dimensions: list[StrictStr] = []
    strength_scale: StrictInt = 3
    raters: list[StrictStr] | None = None
    seed: StrictInt = 0
    pairs: Literal["chain", "all"] = "chain"


def json_body(model: type[BaseModel]) -> Callable[[Request], Awaitable[Any]]:
    """A dependency that reads and validates the JSON body. Listed after the auth dependency it runs after it (FastAPI
    reads a declared body parameter before any dependency runs, so a tokenless client could make it hold the body)."""

    async def read(request: Request) -> Any:
        try:
            raw = await request.body()
        except ClientDisconnect:  # gone mid-body: nobody reads the answer, but no traceback per hostile client
            raise HTTPException(
                status_code=400, detail="the client disconnected before sending the whole body"
            ) from None
        try:
            return model.model_validate_json(raw)
        except ValidationError as e:
            raise RequestValidationError([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]) from None

    return read


def _short(value: Any, limit: int = 100) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "…"
    return value


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Validation errors without the input (which can be megabytes) and with long keys cut: never echo a body."""
    return [
        {
            "loc": [_short(x) for x in err.get("loc", ())],
            "msg": _short(str(err.get("msg", "")), 300),
            "type": err.get("type"),
        }
        for err in exc.errors()[:20]
    ]


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status_code=401, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _finite(obj: Any) -> Any:
    """NaN / inf -> None, recursively: JSON has no NaN and the response encoder refuses it."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _is_admin(request: Request, token: str) -> bool:
    expected = request.app.state.admin_hash
    return expected is not None and hmac.compare_digest(hash_token(token), expected)


def current_rater(request: Request) -> RaterInfo:
    """The rater behind the bearer token: 401 without a valid token, 403 for the admin token (not a rater)."""
    token = _bearer(request)
    if token is None:
        raise _unauthorized("missing token: send Authorization: Bearer <token>")
    rater = request.app.state.store.rater_by_token(token)
    if rater is not None:
        return rater
    if _is_admin(request, token):
        raise HTTPException(status_code=403, detail="the admin token is not a rater: log in with a rater token")
    raise _unauthorized("unknown token")


def require_admin(request: Request) -> None:
    """401 without a valid token, 403 for a rater's token."""
    token = _bearer(request)
    if token is None:
        raise _unauthorized("missing token: send Authorization: Bearer <token>")
    if _is_admin(request, token):
        return
    if request.app.state.store.rater_by_token(token) is not None:
        raise HTTPException(status_code=403, detail="admin endpoints need the admin token")
    raise _unauthorized("unknown token")


Rater = Annotated[RaterInfo, Depends(current_rater)]


def _plain_error(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handler(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return handler


def create_app(
    store: Store, admin_token: str | None = None, max_body: int = MAX_BODY, max_admin_body: int = MAX_ADMIN_BODY
) -> FastAPI:
    """The app over ``store``. With ``admin_token`` None no token opens the admin endpoints (401; 403 for raters);
    an admin token needs at least MIN_ADMIN_TOKEN characters. ``max_body`` / ``max_admin_body``: request size limits
    in bytes for the rater and the admin API."""
    if admin_token is not None and len(admin_token.strip()) < MIN_ADMIN_TOKEN:
        raise ValueError(
            f"the admin token must have at least {MIN_ADMIN_TOKEN} characters (got {len(admin_token.strip())}): "
            "generate one with secrets.token_urlsafe(32)"
        )
    app = FastAPI(title="rlhfkit annotation", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.admin_hash = hash_token(admin_token.strip()) if admin_token else None
    # the last added is the outermost: security headers go on the 413s too
    app.add_middleware(BodyLimit, max_body=max_body, max_admin_body=max_admin_body)
    app.add_middleware(SecurityHeaders)

    admin = [Depends(require_admin)]

    @app.exception_handler(Exception)
    async def _crash(_request: Request, exc: Exception) -> JSONResponse:
        # Starlette answers 500s outside every user middleware: the headers are added here by hand
        return JSONResponse(
            {"detail": "internal server error"},
            status_code=500,
            headers={k.decode(): v.decode() for k, v in SECURITY_HEADERS},
        )

    @app.exception_handler(RequestValidationError)
    async def _unprocessable(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_errors(exc)}, status_code=422)

    # the store's errors, one status each: their message is the answer
    for error, status in ((IncompleteError, 409), (NotFoundError, 404), (ForbiddenError, 403), (ValueError, 422)):
        app.add_exception_handler(error, _plain_error(status))

    # ------------------------------------------------------------ page

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # ------------------------------------------------------------ rater API

    def _campaign_of_rater(rater: RaterInfo, name: str) -> None:
        if not any(c["name"] == name for c in store.rater_campaigns(rater.id)):
            store.progress(name)  # 404 when there is no such campaign at all
            raise ForbiddenError(f"you have no items in campaign {name!r}")

    @app.get("/api/me")
    def me(rater: Rater) -> dict[str, Any]:
        return {"rater": rater.name, "campaigns": store.rater_campaigns(rater.id)}

    @app.get("/api/campaigns/{name}/next")
    def next_item(name: str, rater: Rater) -> dict[str, Any]:
        _campaign_of_rater(rater, name)
        view = store.next_assignment(rater.id, name)
        if view is None:
            queue = store.rater_queue(rater.id, name)
            return {"done": True, "assignment": None, "progress": {"done": len(queue), "total": len(queue)}}
        return {"done": False, "assignment": view, "progress": view["progress"]}

    @app.get("/api/campaigns/{name}/assignments")
    def queue(name: str, rater: Rater) -> list[dict[str, Any]]:
        _campaign_of_rater(rater, name)
        return store.rater_queue(rater.id, name)

    @app.get("/api/assignments/{assignment_id}")
    def assignment(assignment_id: int, rater: Rater) -> dict[str, Any]:
        return store.assignment_view(rater.id, assignment_id)

    @app.post("/api/assignments/{assignment_id}/label")
    def label(assignment_id: int, rater: Rater, body: Annotated[LabelIn, Depends(json_body(LabelIn))]) -> JSONResponse:
        """201 stored; 200 the same answer again (a retry: nothing changes); 409 a different answer to an answered
        assignment, with the earlier answer, which stands, as "label"."""
        answer = body.model_dump(exclude_none=True)
        try:
            stored, created = store.submit(rater.id, assignment_id, answer)
        except AnswerConflict as e:
            stored, created, status = e.label, False, 409
        else:
            status = 201 if created else 200
        progress = store.assignment_progress(rater.id, assignment_id)
        content = {"assignment": assignment_id, "created": created, "label": stored, "progress": progress}
        if status == 409:
            content["detail"] = (
                "you had already answered this item; a saved answer cannot be changed, so your earlier answer stands"
            )
        return JSONResponse(content, status_code=status)

    # ------------------------------------------------------------ admin API

    @app.get("/api/admin/raters", dependencies=admin)
    def list_raters() -> list[str]:
        return store.raters()

    @app.post("/api/admin/raters", dependencies=admin, status_code=201)
    def add_rater(body: Annotated[RaterIn, Depends(json_body(RaterIn))]) -> dict[str, str]:
        return {"name": body.name.strip(), "token": store.add_rater(body.name, body.attributes)}

    # rater attributes (demographic audits) live under the admin API only: no rater endpoint returns them
    @app.get("/api/admin/rater-attributes", dependencies=admin)
    def rater_attributes() -> dict[str, dict[str, str]]:
        return store.rater_attributes()

    @app.put("/api/admin/raters/{name}/attributes", dependencies=admin)
    def set_attributes(name: str, body: Annotated[AttributesIn, Depends(json_body(AttributesIn))]) -> dict[str, Any]:
        store.set_rater_attributes(name, body.attributes)
        return {"name": name, "attributes": store.rater_attributes()[name]}

    @app.get("/api/admin/campaigns", dependencies=admin)
    def list_campaigns() -> list[dict[str, Any]]:
        return store.campaigns()

    @app.post("/api/admin/campaigns", dependencies=admin, status_code=201)
    def create_campaign(body: Annotated[CampaignIn, Depends(json_body(CampaignIn))]) -> dict[str, Any]:
        campaign_id = store.create_campaign(**body.model_dump())
        return {"id": campaign_id, **store.campaign_info(body.name.strip())}

    @app.get("/api/admin/campaigns/{name}", dependencies=admin)
    def campaign(name: str) -> dict[str, Any]:
        return store.campaign_info(name)

    @app.get("/api/admin/campaigns/{name}/labels", dependencies=admin)
    def labels(name: str) -> list[dict[str, Any]]:
        return store.labels(name)

    @app.get("/api/admin/campaigns/{name}/export", dependencies=admin)
    def export(
        name: str, adjudication: str = "majority", dimension: str | None = None, partial: bool = False
    ) -> list[dict[str, Any]]:
        """409 while items lack their labels, unless ?partial=true; gold items are left out."""
        return _finite(store.export(name, adjudication, dimension, partial=partial))

    @app.get("/api/admin/campaigns/{name}/quality", dependencies=admin)
    def quality(name: str, adjudication: str = "majority") -> dict[str, Any]:
        return _finite(store.quality(name, adjudication))

    return app
