"""The labeling web app: a static page plus a small JSON API over the store, guarded by bearer tokens.

Endpoints are plain `def` functions, so FastAPI runs them in its thread pool; each store call opens
its own SQLite connection.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field

from reward.labeling.export import aggregate
from reward.labeling.middleware import BodyLimit, SecurityHeaders
from reward.labeling.stats import compute_stats
from reward.labeling.store import (
    MAX_REASON_CHARS,
    Annotator,
    DuplicateLabel,
    InvalidLabel,
    NotAssigned,
    Store,
    UnknownPair,
)

STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 64 * 1024


class LabelIn(BaseModel):
    """A judgement as the page sends it: `left`/`right` are the responses as they were shown."""

    model_config = ConfigDict(extra="forbid")
    pair_id: str = Field(max_length=200)
    choice: Literal["left", "right", "tie", "both_bad", "skip"]
    strength: int | None = Field(default=None, ge=1, le=3)
    reason: str = Field(default="", max_length=MAX_REASON_CHARS)
    time_ms: int | None = Field(default=None, ge=0)


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


def create_app(store: Store, guidelines: str, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The ASGI app serving `store`; `guidelines` is markdown shown on the page."""
    app = FastAPI(title="Preference labeling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

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
        try:
            label_id = store.add_label(
                who.id, label.pair_id, label.choice, label.strength, label.reason, label.time_ms
            )
        except (DuplicateLabel, NotAssigned) as e:
            raise HTTPException(409, str(e)) from e
        except UnknownPair as e:
            raise HTTPException(404, str(e)) from e
        except InvalidLabel as e:
            raise HTTPException(422, str(e)) from e
        return {"label_id": label_id, "progress": store.progress(who.id)}

    @app.get("/api/annotators")
    def list_annotators(who: AdminCaller) -> list[dict]:
        return [{"name": a.name, "is_admin": a.is_admin, "progress": store.progress(a.id)} for a in store.annotators()]

    @app.get("/api/stats")
    def stats(who: AdminCaller) -> dict:
        return compute_stats(store)

    @app.get("/api/export")
    def export(
        who: AdminCaller,
        min_votes: int = Query(1, ge=0),
        keep_ties: bool = False,
        keep_both_bad: bool = False,
    ) -> Response:
        result = aggregate(store.pairs(), store.votes(), min_votes, keep_ties, keep_both_bad)
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in result.records)
        return Response(
            body,
            media_type="application/x-ndjson",
            headers={"content-disposition": 'attachment; filename="prefs.jsonl"'},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(SecurityHeaders)
    return app
