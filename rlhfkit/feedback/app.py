"""The annotation web app: a FastAPI JSON API over :class:`~rlhfkit.feedback.store.Store` and one static page.

Authentication is ``Authorization: Bearer <token>`` on every API call: a rater's token (issued by ``add-rater``, stored
as its sha256) or the admin token (campaign management). No or an unknown token -> 401; a valid token reaching for what
it may not (another rater's assignment, an admin endpoint with a rater token) -> 403.

Rater endpoints                                   Admin endpoints (admin token)
  GET  /api/me                                      GET/POST /api/admin/raters
  GET  /api/campaigns/{name}/next                   GET/POST /api/admin/campaigns
  GET  /api/campaigns/{name}/assignments            GET  /api/admin/campaigns/{name}
  GET  /api/assignments/{id}                        GET  /api/admin/campaigns/{name}/labels
  POST /api/assignments/{id}/label                  GET  /api/admin/campaigns/{name}/export?adjudication=&dimension=
                                                    GET  /api/admin/campaigns/{name}/quality?adjudication=

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
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from rlhfkit.feedback.store import ForbiddenError, NotFoundError, RaterInfo, Store, hash_token

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

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]


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


def create_app(store: Store, admin_token: str | None = None) -> FastAPI:
    """The app over ``store``. With ``admin_token`` None no token opens the admin endpoints (401; 403 for raters)."""
    app = FastAPI(title="rlhfkit annotation", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.state.admin_hash = hash_token(admin_token) if admin_token else None
    app.add_middleware(SecurityHeaders)

    admin = [Depends(require_admin)]

    @app.exception_handler(NotFoundError)
    async def _not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(ForbiddenError)
    async def _forbidden(_request: Request, exc: ForbiddenError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=403)

    @app.exception_handler(ValueError)
    async def _invalid(_request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

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
    def label(assignment_id: int, body: LabelIn, rater: Rater) -> JSONResponse:
        answer = body.model_dump(exclude_none=True)
        stored, created = store.submit(rater.id, assignment_id, answer)
        progress = store.assignment_progress(rater.id, assignment_id)
        content = {"assignment": assignment_id, "created": created, "label": stored, "progress": progress}
        return JSONResponse(content, status_code=201 if created else 200)

    # ------------------------------------------------------------ admin API

    @app.get("/api/admin/raters", dependencies=admin)
    def list_raters() -> list[str]:
        return store.raters()

    @app.post("/api/admin/raters", dependencies=admin, status_code=201)
    def add_rater(body: RaterIn) -> dict[str, str]:
        return {"name": body.name.strip(), "token": store.add_rater(body.name)}

    @app.get("/api/admin/campaigns", dependencies=admin)
    def list_campaigns() -> list[dict[str, Any]]:
        return store.campaigns()

    @app.post("/api/admin/campaigns", dependencies=admin, status_code=201)
    def create_campaign(body: CampaignIn) -> dict[str, Any]:
        campaign_id = store.create_campaign(**body.model_dump())
        return {"id": campaign_id, **store.campaign_info(body.name.strip())}

    @app.get("/api/admin/campaigns/{name}", dependencies=admin)
    def campaign(name: str) -> dict[str, Any]:
        return store.campaign_info(name)

    @app.get("/api/admin/campaigns/{name}/labels", dependencies=admin)
    def labels(name: str) -> list[dict[str, Any]]:
        return store.labels(name)

    @app.get("/api/admin/campaigns/{name}/export", dependencies=admin)
    def export(name: str, adjudication: str = "majority", dimension: str | None = None) -> list[dict[str, Any]]:
        return _finite(store.export(name, adjudication, dimension))

    @app.get("/api/admin/campaigns/{name}/quality", dependencies=admin)
    def quality(name: str, adjudication: str = "majority") -> dict[str, Any]:
        return _finite(store.quality(name, adjudication))

    return app
