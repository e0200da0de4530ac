"""List pages bounded in cost (issue 11): GET /jobs orders by (created, id) newest or oldest
first, within one tenant and optionally one status or one container group. 0001's
(user_id, created) index left the `id` tie-break and the status filter to a sort or a filter
over every row of the tenant; these serve each listing's filter and ORDER BY straight from an
index, so a page reads its OFFSET + page_size entries and stops (PostgreSQL scans them
backwards for newest first). Container group and status together are served by `jobs_claim`.
`jobs_created` is the administrator's listing of every tenant's jobs.

Plain CREATE INDEX: migrations run in a transaction (CONCURRENTLY cannot), so on a large
jobs table writes wait while the indexes are built (seconds per million jobs)."""


def up(dialect: str) -> list[str]:
    return [
        "CREATE INDEX jobs_list ON jobs (user_id, created, id)",
        "CREATE INDEX jobs_list_status ON jobs (user_id, status, created, id)",
        "CREATE INDEX jobs_list_group ON jobs (user_id, container_group_id, created, id)",
        "CREATE INDEX jobs_created ON jobs (created, id)",
        # A prefix of jobs_list: every query it served, jobs_list serves as well.
        "DROP INDEX jobs_user_created",
    ]
