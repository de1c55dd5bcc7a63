"""``GET /v1/jobs``: the calling API key's jobs, newest first, a page at a time.

The query is validated in ``core/job_listing.py`` and the page read from the owner's index in
``core/job_index.py``; this module only reads the request and writes the reply.
"""

from __future__ import annotations

from flask import Response, jsonify, request

from ..core.job_index import JobIndex
from ..core.job_listing import parse_list_query
from .auth import current_owner
from .services import services

__all__ = ["list_own_jobs"]


def list_own_jobs() -> Response:
    """``{"data": [job, ...], "next_cursor": str | null}``: each job as ``GET /v1/jobs/<id>``
    shows it; ``next_cursor`` null once the walk is over."""
    query = parse_list_query(
        limit=request.args.get("limit"),
        statuses=request.args.getlist("status"),
        created_after=request.args.get("created_after"),
        cursor=request.args.get("cursor"),
    )
    page = JobIndex(services().store.redis).page(current_owner(), query)
    return jsonify(
        {
            "data": [
                job.to_public(queue_position=page.queue_positions.get(job.id)) for job in page.jobs
            ],
            "next_cursor": None if page.next is None else page.next.to_cursor(),
        }
    )
