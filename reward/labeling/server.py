"""The labeling web app: a static page plus a small JSON API over the store, guarded by bearer tokens."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

from reward.labeling.export import aggregate
from reward.labeling.middleware import AccessLog, BodyLimit, SecurityHeaders
from reward.labeling.records import (
    MAX_ID_CHARS,
    MAX_REASON_CHARS,
    MAX_TIME_MS,
    Annotator,
    DuplicateLabel,
    InvalidLabel,
    NotAssigned,
    UnknownPair,
    has_lone_surrogate,
)
from reward.labeling.stats import compute_stats, disagreements
from reward.labeling.store import Store

# Endpoints are plain `def` functions, so FastAPI runs them in its thread pool; each store call opens its own SQLite
# connection.

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 64 * 1024


def _valid_unicode(value: str) -> str:
    """Refuse text SQLite cannot store as UTF-8: JSON lets a body carry an unpaired surrogate."""
    if has_lone_surrogate(value):
        raise ValueError("contains an unpaired surrogate (not valid Unicode text)")
    return value


class VoteIn(BaseModel):
    """A judgement as the page sends it: `left`/`right` are the responses as they were shown; strict JSON types."""

    model_config = ConfigDict(extra="forbid")
    choice: Literal["left", "right", "tie", "both_bad", "skip"]
    strength: StrictInt | None = Field(default=None, ge=1, le=3)
    reason: StrictStr = Field(default="", max_length=MAX_REASON_CHARS)
    time_ms: StrictInt | None = Field(default=None, ge=0, le=MAX_TIME_MS)

    _reason_is_text = field_validator("reason")(lambda value: _valid_unicode(value))


class LabelIn(VoteIn):
    """A new label: the vote plus the pair it is for."""

    pair_id: StrictStr = Field(min_length=1, max_length=MAX_ID_CHARS)

    _id_is_text = field_validator("pair_id")(lambda value: _valid_unicode(value))


def _validation_error(request: Request, error: RequestValidationError) -> Response:
    """422 with where and what for each problem, never echoing the input (it may be NaN or invalid Unicode)."""
    detail = [{"loc": [str(part) for part in e["loc"]], "msg": e["msg"]} for e in error.errors()]
    return Response(json.dumps({"detail": detail}), status_code=422, media_type="application/json")


def _bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    return token.strip()


def current_annotator(request: Request) -> Annotator:
    """The annotator whose token the request carries (401 without a known one)."""
    found = request.app.state.store.annotator_by_token(_bearer_token(request))
    if found is None:
        raise HTTPException(401, "unknown token", headers={"WWW-Authenticate": "Bearer"})
    return found


def current_admin(who: Annotated[Annotator, Depends(current_annotator)]) -> Annotator:
    if not who.is_admin:
        raise HTTPException(403, "this needs an admin token")
    return who


Caller = Annotated[Annotator, Depends(current_annotator)]
AdminCaller = Annotated[Annotator, Depends(current_admin)]


REFUSAL_STATUS = ((DuplicateLabel, 409), (NotAssigned, 409), (UnknownPair, 404), (InvalidLabel, 422))


@contextmanager
def refusals_as_http():
    """The store's refusals of a label as the HTTP errors they mean (conflict, not found, unprocessable)."""
    try:
        yield
    except tuple(kind for kind, _ in REFUSAL_STATUS) as e:
        status = next(code for kind, code in REFUSAL_STATUS if isinstance(e, kind))
        raise HTTPException(status, str(e)) from e


def create_app(store: Store, guidelines: str, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The ASGI app serving `store`; `guidelines` is markdown shown on the page."""
    app = FastAPI(title="Preference labeling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

    @app.api_route("/admin", methods=["GET", "HEAD"], include_in_schema=False)
    def admin_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "admin.html", media_type="text/html; charset=utf-8")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    @app.get("/api/health")
    def health() -> dict:
        return {"ok": True}

    @app.get("/api/me")
    def me(who: Caller) -> dict:
        return {"name": who.name, "is_admin": who.is_admin, "progress": store.progress(who.id)}

    @app.get("/api/guidelines")
    def get_guidelines(who: Caller) -> dict:
        return {"markdown": guidelines}

    @app.get("/api/next")
    def next_pair(who: Caller) -> dict:
        """The caller's next pair (responses as `left`/`right`), or `pair: null` when their queue is empty."""
        assignment = store.next_assignment(who.id)
        pair = None
        if assignment is not None:
            pair = {
                "id": assignment.pair_id,
                "prompt": assignment.prompt,
                "left": assignment.left,
                "right": assignment.right,
            }
        return {"pair": pair, "progress": store.progress(who.id)}

    @app.post("/api/labels", status_code=201)
    def add_label(label: LabelIn, who: Caller) -> dict:
        with refusals_as_http():
            label_id = store.add_label(
                who.id, label.pair_id, label.choice, label.strength, label.reason, label.time_ms
            )
        return {"label_id": label_id, "progress": store.progress(who.id)}

    @app.put("/api/labels/{label_id}")
    def edit_label(vote: VoteIn, who: Caller, label_id: int = PathParam(ge=1, le=2**63 - 1)) -> dict:
        """Change one of the caller's own labels (undo and edit); the previous vote stays in the history."""
        with refusals_as_http():
            store.edit_label(who.id, label_id, vote.choice, vote.strength, vote.reason, vote.time_ms)
        return {"label_id": label_id, "progress": store.progress(who.id)}

    @app.get("/api/history")
    def history(who: Caller, limit: int = Query(20, ge=1, le=100)) -> dict:
        """The caller's most recent labels, newest first, to go back to and change."""
        return {"labels": store.history(who.id, limit)}

    @app.get("/api/annotators")
    def list_annotators(who: AdminCaller) -> list[dict]:
        return store.annotator_table()

    @app.get("/api/stats")
    def stats(who: AdminCaller) -> dict:
        return compute_stats(store)

    @app.get("/api/disagreements")
    def pairs_to_review(who: AdminCaller) -> list[dict]:
        return disagreements(store)

    @app.get("/api/export")
    def export(
        who: AdminCaller,
        min_votes: int = Query(1, ge=0),
        keep_ties: bool = False,
        keep_both_bad: bool = False,
        raw: bool = False,
    ) -> Response:
        """The aggregated preference records, or with `raw` every current vote; as a JSONL download."""
        if raw:
            records, name = store.raw_votes(), "votes.jsonl"
        else:
            result = aggregate(store.pairs(), store.votes(), min_votes, keep_ties, keep_both_bad)
            records, name = result.records, "prefs.jsonl"
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        return Response(
            body,
            media_type="application/x-ndjson",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(AccessLog)
    app.add_middleware(SecurityHeaders)
    return app
