"""What the compliance report reads besides the audit trail: data-subject requests, the last
run of each scheduled job, and hourly counts of rejected webhooks."""

from __future__ import annotations

import orjson

from gateway.records.base import LastRun, RejectionCount, SubjectRequest
from gateway.records.sql.queries import Row, SqlQueries, detail, page

_DSR_COLUMNS = (
    "request_id, kind, subject_index, requested_by, status, created_at, completed_at, items"
)


def _dsr(row: Row) -> SubjectRequest:
    return SubjectRequest(
        request_id=row[0],
        kind=row[1],
        subject_index=row[2],
        requested_by=row[3],
        status=row[4],
        created_at=row[5],
        completed_at=row[6],
        items=row[7],
    )


def _last_run(row: Row) -> LastRun:
    return LastRun(operation=row[0], at=row[1], outcome=row[2], detail=detail(row[3]))


class EvidenceQueries(SqlQueries):
    """The ``Store`` methods of data-subject requests, last runs and rejection counts."""

    # -- data-subject requests -------------------------------------------------------------

    async def put_subject_request(self, request: SubjectRequest) -> None:
        await self._write(
            f"INSERT INTO subject_requests ({_DSR_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (request_id) DO UPDATE SET kind = excluded.kind, "
            "subject_index = excluded.subject_index, requested_by = excluded.requested_by, "
            "status = excluded.status, created_at = excluded.created_at, "
            "completed_at = excluded.completed_at, items = excluded.items",
            (
                request.request_id,
                request.kind,
                request.subject_index,
                request.requested_by,
                request.status,
                request.created_at,
                request.completed_at,
                request.items,
            ),
        )

    async def get_subject_request(self, request_id: str) -> SubjectRequest | None:
        return await self._one(
            f"SELECT {_DSR_COLUMNS} FROM subject_requests WHERE request_id = ?",
            (request_id,),
            _dsr,
        )

    async def list_subject_requests(self, limit: int = 100) -> list[SubjectRequest]:
        return await self._all(
            f"SELECT {_DSR_COLUMNS} FROM subject_requests "
            "ORDER BY created_at DESC, request_id LIMIT ?",
            (page(limit),),
            _dsr,
        )

    async def find_subject_requests(self, subject_index: str) -> list[SubjectRequest]:
        return await self._all(
            f"SELECT {_DSR_COLUMNS} FROM subject_requests WHERE subject_index = ? "
            "ORDER BY created_at, request_id",
            (subject_index,),
            _dsr,
        )

    async def forget_subject_index(self, subject_index: str) -> int:
        return await self._write(
            "UPDATE subject_requests SET subject_index = '' WHERE subject_index = ?",
            (subject_index,),
        )

    # -- last runs and rejection counts ----------------------------------------------------

    async def put_last_run(self, run: LastRun) -> None:
        await self._write(
            "INSERT INTO last_runs (operation, at, outcome, detail) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (operation) DO UPDATE SET at = excluded.at, "
            "outcome = excluded.outcome, detail = excluded.detail",
            (
                run.operation,
                run.at,
                run.outcome,
                orjson.dumps(run.detail, option=orjson.OPT_SORT_KEYS).decode(),
            ),
        )

    async def get_last_run(self, operation: str) -> LastRun | None:
        return await self._one(
            "SELECT operation, at, outcome, detail FROM last_runs WHERE operation = ?",
            (operation,),
            _last_run,
        )

    async def add_rejection_counts(self, counts: list[RejectionCount]) -> None:
        async with self._transaction(write=True) as tx:
            for c in counts:
                await tx.execute(
                    "INSERT INTO webhook_rejections (hour, carrier, layer, count) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (hour, carrier, layer) "
                    "DO UPDATE SET count = webhook_rejections.count + excluded.count",
                    (c.hour, c.carrier, c.layer, c.count),
                )

    async def rejection_counts(self, since_hour: int) -> list[RejectionCount]:
        return await self._all(
            "SELECT hour, carrier, layer, count FROM webhook_rejections WHERE hour >= ? "
            "ORDER BY hour, carrier, layer",
            (since_hour,),
            lambda r: RejectionCount(int(r[0]), r[1], r[2], int(r[3])),
        )

    async def delete_rejection_counts_before(self, hour: int) -> int:
        return await self._write("DELETE FROM webhook_rejections WHERE hour < ?", (hour,))
