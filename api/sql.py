"""The SQL of the queue's hot paths, written out per dialect and read in one sitting.

Peewee builds the rest. These two run on every poll and every heartbeat, where building the
query costs more CPU than the database spends executing it, and where the dialects differ:
PostgreSQL locks the candidate row with SKIP LOCKED; SQLite's BEGIN IMMEDIATE already
excludes other writers.
"""

from api import lease

_CANDIDATE_COLUMNS = "j.id, j.status, j.machine_id, j.heartbeat_interval, j.num_attempts"
_NOT_BANNED = ("NOT EXISTS (SELECT 1 FROM job_bans b WHERE b.job_id = j.id AND b.machine_id = {p})")

# Stale running jobs (the holder stopped heartbeating) first, then the oldest pending one.
_STALE = ("SELECT 0 AS rank, " + _CANDIDATE_COLUMNS + " FROM jobs j"
          " WHERE j.user_id = {p}{project} AND {group} AND j.status = 'running'"
          " AND j.lease_expires < {p}{key}"
          " AND " + _NOT_BANNED + " ORDER BY j.lease_expires LIMIT 1")
_PENDING = ("SELECT 1 AS rank, " + _CANDIDATE_COLUMNS + " FROM jobs j"
            " WHERE j.user_id = {p}{project} AND {group} AND j.status = 'pending'{key}"
            " AND " + _NOT_BANNED + " ORDER BY j.created, j.id LIMIT 1")

_CLAIM_CANDIDATE = {
    # PostgreSQL allows no FOR UPDATE inside a UNION, but does inside CTEs.
    "postgresql": "WITH stale AS (" + _STALE + " FOR UPDATE SKIP LOCKED),"
                  " pending AS (" + _PENDING + " FOR UPDATE SKIP LOCKED)"
                  " SELECT * FROM stale UNION ALL SELECT * FROM pending ORDER BY rank LIMIT 1",
    "sqlite": "SELECT * FROM (" + _STALE + ") UNION ALL SELECT * FROM ("
              + _PENDING + ") ORDER BY rank LIMIT 1",
}

# `SET LOCAL synchronous_commit` makes PostgreSQL acknowledge a heartbeat without waiting for
# its WAL flush. A heartbeat lost in a database crash only shortens one lease by a fraction of a
# second; waiting for fsync would cap heartbeats per second for nothing. Both statements go in
# one round trip and run in one implicit transaction.
_HEARTBEAT = {
    "postgresql": "SET LOCAL synchronous_commit TO OFF; "
                  "UPDATE jobs SET heartbeat = %s,"
                  " lease_expires = %s + {lease} * interval '1 second',"
                  " num_heartbeats = num_heartbeats + 1"
                  " WHERE id = %s AND machine_id = %s AND status = 'running'{owner}",
    "sqlite": "UPDATE jobs SET heartbeat = ?,"
              " lease_expires = strftime('%Y-%m-%d %H:%M:%f', ?,"
              " printf('+%d seconds', {lease})),"
              " num_heartbeats = num_heartbeats + 1"
              " WHERE id = ? AND machine_id = ? AND status = 'running'{owner}",
}


def _placeholder(dialect: str) -> str:
    return "%s" if dialect == "postgresql" else "?"


def _key_exists(p: str, key_hash: str | None, now) -> tuple[str, list]:
    """The condition that the caller's Kelpie key still exists and has not expired, checked in
    the hot statement itself: callers may then authenticate from a per-process cache and a
    revoked key still stops at once (api/auth.py). Empty for other credentials."""
    if key_hash is None:
        return "", []
    return (f" AND EXISTS (SELECT 1 FROM api_keys k WHERE k.key_hash = {p}"
            f" AND (k.expires IS NULL OR k.expires > {p}))"), [key_hash, now]


def claim_candidate(dialect: str, user_id: str, machine_id: str, container_group_id, now,
                    project: str | None = None, key_hash: str | None = None):
    """(sql, params) selecting the job to hand to `machine_id`, locked where the dialect can.
    `project` confines a Salad principal to the jobs submitted under its project; `key_hash`
    finds nothing once that key is gone."""
    p = _placeholder(dialect)
    if container_group_id is None:
        group, group_params = "j.container_group_id IS NULL", []
    else:
        group, group_params = f"j.container_group_id = {p}", [container_group_id]
    if project is None:
        project_sql, owner = "", [user_id]
    else:
        project_sql, owner = f" AND j.project = {p}", [user_id, project]
    key_sql, key_params = _key_exists(p, key_hash, now)
    sql = _CLAIM_CANDIDATE[dialect].format(p=p, group=group, project=project_sql, key=key_sql)
    params = ([*owner, *group_params, now, *key_params, machine_id]
              + [*owner, *group_params, *key_params, machine_id])
    return sql, params


def heartbeat(dialect: str, job_id: str, machine_id: str, owner_id: str | None, now, *,
              project: str | None = None, container_group_ids=None, key_hash=None):
    """(sql, params) refreshing the holder's heartbeat and lease; `owner_id` None = any user.
    `project` and `container_group_ids` confine Salad principals and worker credentials;
    `key_hash` updates nothing once that key is gone."""
    p = _placeholder(dialect)
    owner, params = "", [now, now, job_id, machine_id]
    if owner_id is not None:
        owner += f" AND user_id = {p}"
        params.append(owner_id)
    if project is not None:
        owner += f" AND project = {p}"
        params.append(project)
    if container_group_ids is not None:
        owner += f" AND container_group_id IN ({', '.join([p] * len(container_group_ids))})"
        params.extend(container_group_ids)
    key_sql, key_params = _key_exists(p, key_hash, now)
    owner += key_sql
    params.extend(key_params)
    return _HEARTBEAT[dialect].format(owner=owner, lease=lease.sql_seconds(dialect)), params
