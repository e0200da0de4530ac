"""The claim's candidate, found the same way however the jobs table has grown (issue 12).

The claim picks a tenant's oldest pending job of a group. Run as a prepared statement,
PostgreSQL plans it without the parameters' values after a few runs, and for a tenant with one
group (every row the same user and group) that generic plan walked `jobs_created` from the
oldest job, skipping every job already claimed or finished: measured after 5,000 claims of
20,000 jobs, 5,006 rows skipped and 8.9 ms per claim, growing with every job the tenant ever
ran. Only pending jobs are in this index, in the order they are claimed, so the candidate is
its first entry not locked or banned, whatever the statistics say; a job leaves it when it is
claimed, so heartbeats (which update running jobs) never write to it.

Plain CREATE INDEX: migrations run in a transaction, so on a large jobs table writes wait
while it is built (seconds per million jobs)."""


def up(dialect: str) -> list[str]:
    return ["CREATE INDEX jobs_pending ON jobs (user_id, container_group_id, created, id)"
            " WHERE status = 'pending'"]
