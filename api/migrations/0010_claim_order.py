"""The claim's candidate comes from `jobs_pending` whatever the statistics say (issue 12).

0009's `jobs_pending` held the pending jobs in claim order, (created, id), but so did four
other indexes in part: `jobs_created` (created, id), `jobs_list` (user_id, created, id),
`jobs_list_group` and `jobs_claim`. When the statistics were taken while a burst of jobs was
still pending (every row pending, one tenant, one group), PostgreSQL costed them all alike and
planned the claim on `jobs_created`, walking every job already claimed since: measured, 3,841
rows skipped and 3.3 ms per claim a few seconds into a 120,000-job burst, and 808 claims/s
where the same statement on `jobs_pending` did 1,780/s. A fresh ANALYZE only repairs it after
a tenth of the table has changed.

On PostgreSQL the claim now orders by `extract(epoch from created)`, the same order as
`created` (exact to the microsecond), and this index is the only one that holds that
expression: every other path would have to sort all of the tenant's pending jobs first, so the
planner takes this one. SQLite plans its claim by other rules and keeps 0009's index.

Plain CREATE INDEX: migrations run in a transaction, so on a large jobs table writes wait
while it is built (seconds per million jobs)."""


def up(dialect: str) -> list[str]:
    if dialect != "postgresql":
        return []
    return ["DROP INDEX jobs_pending",
            "CREATE INDEX jobs_pending ON jobs"
            " (user_id, container_group_id, (extract(epoch from created)), id)"
            " WHERE status = 'pending'"]
