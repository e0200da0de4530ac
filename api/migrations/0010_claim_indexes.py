"""The claim reads the same few pages whatever the statistics say and whatever other tenants
hold (issue 12).

Both of the claim's lookups could be served by several indexes, and PostgreSQL chose between
them by statistics that a burst of jobs makes wrong: taken while every job was pending, they
say a group has no running jobs and that every job is pending.

- **The candidate.** 0009's `jobs_pending` held the pending jobs in claim order, (created, id),
  but `jobs_created`, `jobs_list`, `jobs_list_group` and `jobs_claim` hold that order too.
  With every row looking pending, PostgreSQL costed them alike and planned the claim on
  `jobs_created`, walking every job claimed since: measured 3,841 rows skipped and 3.3 ms per
  claim a few seconds into a 120,000-job burst, 808 claims/s where the same statement on
  `jobs_pending` did 1,780/s. On PostgreSQL the claim now orders by
  `extract(epoch from created)` (the same order, exact to the microsecond), and `jobs_pending`
  is rebuilt on that expression: no other index holds it, so any other path would first sort
  every pending job of the group, and the planner takes this one.
- **The stale check** (is there a running job of this group whose lease ran out?) was served
  by `jobs_lease` (status, lease_expires), which reads every expired lease of every tenant
  until one is this group's, or by `jobs_claim`, which reads every running job of the group:
  measured 4,511 rows and 7.6 ms per claim in the benchmark, 876 claims/s. `jobs_stale` holds
  the running jobs only, by group, lease and tenant, so the check reads the expired leases of
  this group and nothing else, and with statistics that know of running jobs it is the
  cheapest index for the check. With statistics that say nothing runs (taken during a burst),
  every index looks like one row to PostgreSQL and it may still take `jobs_claim`: a walk
  bounded by the jobs running at that moment, not by the tenant's history, until autovacuum
  analyzes the table again.
- **`jobs_lease` goes** on PostgreSQL. Its other reader, the sweeper that wakes the waiters of
  groups whose leases ran out (api/wakeups.py), asks by group and lease, which `jobs_stale`
  answers exactly. Every claim and every heartbeat moves a job's lease, so each index on it is
  written on every one of them: one index more and one less leaves them as they were.

SQLite plans its claim by other rules; it gets `jobs_stale` (its stale check has the same
shape), keeps `jobs_lease` (its sweeper also looks for pending jobs) and keeps 0009's
`jobs_pending`.

Plain CREATE INDEX: migrations run in a transaction, so on a large jobs table writes wait
while these are built (seconds per million jobs)."""

STALE = ("CREATE INDEX jobs_stale ON jobs (container_group_id, lease_expires, user_id)"
         " WHERE status = 'running'")


def up(dialect: str) -> list[str]:
    if dialect != "postgresql":
        return [STALE]
    return ["DROP INDEX jobs_pending",
            "CREATE INDEX jobs_pending ON jobs"
            " (user_id, container_group_id, (extract(epoch from created)), id)"
            " WHERE status = 'pending'",
            STALE,
            "DROP INDEX jobs_lease"]
