"""The SQL of the queue's hot paths, written out per dialect and read in one sitting.

Peewee builds the rest. These two run on every poll and every heartbeat, where building the
query costs more CPU than the database spends executing it, and where the dialects differ:
PostgreSQL locks the candidate row with SKIP LOCKED; SQLite's BEGIN IMMEDIATE already
excludes other writers.
"""

import functools
import hashlib

from api import lease
from api.states import Action, JobStatus, rule

# The statuses and event kind these statements write or test, taken from the state table
# (api/states.py) and formatted in once at import: the SQL text, and so each prepared
# statement, is the same as if they were written out.
_CLAIM = rule(JobStatus.PENDING, Action.CLAIM)  # pending -> running, "assigned"
_PENDING_SQL = f"'{JobStatus.PENDING}'"
_RUNNING_SQL = f"'{JobStatus.RUNNING}'"  # the status a holder's job has (heartbeat, reclaim)

_CANDIDATE_COLUMNS = "j.id, j.status, j.machine_id, j.heartbeat_interval, j.num_attempts"
_NOT_BANNED = ("NOT EXISTS (SELECT 1 FROM job_bans b WHERE b.job_id = j.id AND b.machine_id = {p})")

# Stale running jobs (the holder stopped heartbeating) first, then the oldest pending one.
_STALE = ("SELECT 0 AS rank, " + _CANDIDATE_COLUMNS + " FROM jobs j"
          " WHERE j.user_id = {p}{project} AND {group} AND j.status = " + _RUNNING_SQL
          + " AND j.lease_expires < {p}{key}"
          " AND " + _NOT_BANNED + " ORDER BY j.lease_expires LIMIT 1")
_PENDING = ("SELECT 1 AS rank, " + _CANDIDATE_COLUMNS + " FROM jobs j"
            " WHERE j.user_id = {p}{project} AND {group} AND j.status = " + _PENDING_SQL + "{key}"
            " AND " + _NOT_BANNED + " ORDER BY {claim_order} LIMIT 1")

# The order pending jobs are claimed in: oldest first. PostgreSQL's is written as the
# expression `jobs_pending` holds (migration 0010), which no other index holds, so no plan can
# walk a listing index over jobs already claimed instead; the same order as `created`.
_CLAIM_ORDER = {"postgresql": "extract(epoch from j.created), j.id", "sqlite": "j.created, j.id"}

_CLAIM_CANDIDATE = {
    # PostgreSQL allows no FOR UPDATE inside a UNION, but does inside CTEs.
    "postgresql": "WITH stale AS (" + _STALE + " FOR UPDATE SKIP LOCKED),"
                  " pending AS (" + _PENDING + " FOR UPDATE SKIP LOCKED)"
                  " SELECT * FROM stale UNION ALL SELECT * FROM pending ORDER BY rank LIMIT 1",
    "sqlite": "SELECT * FROM (" + _STALE + ") UNION ALL SELECT * FROM ("
              + _PENDING + ") ORDER BY rank LIMIT 1",
}

# Prepared, this statement gets a generic plan that cannot see how few jobs match, from
# statistics a burst of submissions makes wrong; each lookup therefore has one index that fits
# it exactly (migration 0010). The stale check's conditions are every key of `jobs_stale`, so
# it reads only this group's expired leases, the earliest first; the candidate's order is
# written as `jobs_pending` holds it (`_CLAIM_ORDER`).
#
# PostgreSQL's claim of a pending job in one statement, run outside any explicit transaction
# (one round trip, committed on its own): pick the oldest pending job (SKIP LOCKED), assign it,
# write its "assigned" event and, when it has a webhook, its outbox row. It touches nothing when
# the group has a stale running job (a lost lease to take over first: interruption accounting
# and timeouts stay in Python, api/queue.py), and says so; it also says whether the caller's key
# still exists, so "no work" and "key revoked" need no second read.
_CLAIM_PENDING_PG = (
    "WITH key AS (SELECT {key_ok} AS ok),"
    " stale AS (SELECT 1 FROM jobs j WHERE j.user_id = %(user)s::text{project} AND {group}"
    " AND j.status = " + _RUNNING_SQL + " AND j.lease_expires < %(now)s::timestamp"
    " AND " + _NOT_BANNED.format(p="%(machine)s::text") + " ORDER BY j.lease_expires LIMIT 1),"
    " candidate AS (SELECT j.id FROM jobs j WHERE j.user_id = %(user)s::text{project} AND {group}"
    " AND j.status = " + _PENDING_SQL + " AND (SELECT ok FROM key)"
    " AND " + _NOT_BANNED.format(p="%(machine)s::text")
    + " AND NOT EXISTS (SELECT 1 FROM stale)"
    " ORDER BY " + _CLAIM_ORDER["postgresql"] + " LIMIT 1 FOR UPDATE SKIP LOCKED),"
    " assigned AS (UPDATE jobs j SET status = '" + _CLAIM.target + "',"
    " machine_id = %(machine)s::text, started = %(now)s::timestamp,"
    " heartbeat = %(now)s::timestamp,"
    " lease_expires = %(now)s::timestamp + {lease} * interval '1 second',"
    " num_attempts = j.num_attempts + 1"
    " FROM candidate c WHERE j.id = c.id RETURNING j.*),"
    " event AS (INSERT INTO job_events (job_id, at, kind, status, machine_id, attempt, actor)"
    " SELECT a.id, %(now)s::timestamp, '" + _CLAIM.event + "', '" + _CLAIM.target + "',"
    " a.machine_id, a.num_attempts,"
    " %(actor)s::text FROM assigned a),"
    " outbox AS (INSERT INTO webhook_deliveries (job_id, user_id, url, job_status, body, status,"
    " created, next_attempt, attempts)"
    " SELECT a.id, a.user_id, a.webhook, '" + _CLAIM.target + "',"
    # The body webhooks.enqueue writes, key for key, compact.
    " '{{\"status\":\"" + _CLAIM.target + "\",\"job_id\":' || to_json(a.id)::text"
    " || ',\"machine_id\":' || to_json(a.machine_id)::text"
    " || ',\"container_group_id\":' || COALESCE(to_json(a.container_group_id)::text, 'null')"
    " || ',\"attempt\":' || a.num_attempts"
    " || ',\"timestamp\":' || to_json(%(stamp)s::text)::text"
    " || ',\"num_failures\":' || a.num_failures"
    " || ',\"num_interruptions\":' || a.num_interruptions || ',\"reason\":null}}',"
    " 'pending', %(now)s::timestamp, %(now)s::timestamp, 0 FROM assigned a"
    " WHERE a.webhook IS NOT NULL AND a.webhook <> '')"
    " SELECT EXISTS (SELECT 1 FROM stale) AS stale, (SELECT ok FROM key) AS key_ok, a.*"
    " FROM (SELECT 1) one LEFT JOIN assigned a ON true"
)
# Its parameters by name, each sent once however often the text uses it (`now` appears nine
# times): the order they are numbered in ($1, $2, ...) when present in a variant.
_CLAIM_PARAMETERS = ("user", "project", "group", "now", "machine", "key", "actor", "stamp")

# Sent before a heartbeat's statement on PostgreSQL, in the same round trip and so the same
# implicit transaction: it acknowledges the heartbeat without waiting for its WAL flush. A
# heartbeat lost in a database crash only shortens one lease by a fraction of a second; waiting
# for fsync would cap heartbeats per second for nothing.
NO_FLUSH_WAIT = "SET LOCAL synchronous_commit TO OFF; "

# The claim of a pending job is acknowledged without waiting for its flush too. A claim lost in
# a database crash (the last fraction of a second before it) leaves the job pending, as if the
# claim had never been made; the machine that was told it got the job is fenced out like any
# holder that lost its lease: its next heartbeat is answered `canceled`, and a late report of
# it changes nothing (`recorded: false`). Waiting for the flush bought nothing fencing does not
# already give, and cost every claim a disk write wait.
CLAIM_PENDING_PG_BEFORE = NO_FLUSH_WAIT

# PostgreSQL runs it PREPAREd (api/queue.py), hence the casts: a prepared statement's parameters
# get their types from the text alone.
_HEARTBEAT = {
    "postgresql": "UPDATE jobs SET heartbeat = %s::timestamp,"
                  " lease_expires = %s::timestamp + {lease} * interval '1 second',"
                  " num_heartbeats = num_heartbeats + 1"
                  " WHERE id = %s AND machine_id = %s AND status = " + _RUNNING_SQL
                  + "{owner}",
    "sqlite": "UPDATE jobs SET heartbeat = ?,"
              " lease_expires = strftime('%Y-%m-%d %H:%M:%f', ?,"
              " printf('+%d seconds', {lease})),"
              " num_heartbeats = num_heartbeats + 1"
              " WHERE id = ? AND machine_id = ? AND status = " + _RUNNING_SQL + "{owner}",
}


def _placeholder(dialect: str) -> str:
    return "%s" if dialect == "postgresql" else "?"


def _key_valid(key_hash: str, now: str) -> str:
    """The condition that the caller's Kelpie key still exists and has not expired, given the
    placeholders of its hash and of the time, checked in the hot statement itself: callers may
    then authenticate from a per-process cache and a revoked key still stops at once
    (api/auth.py)."""
    return (f"EXISTS (SELECT 1 FROM api_keys k WHERE k.key_hash = {key_hash}"
            f" AND (k.expires IS NULL OR k.expires > {now}))")


def _key_exists(p: str, key_hash: str | None, now) -> tuple[str, list]:
    """`_key_valid` as a further condition with its parameters; empty for other credentials."""
    if key_hash is None:
        return "", []
    return f" AND {_key_valid(p, p)}", [key_hash, now]


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
    sql = _CLAIM_CANDIDATE[dialect].format(p=p, group=group, project=project_sql, key=key_sql,
                                           claim_order=_CLAIM_ORDER[dialect])
    params = ([*owner, *group_params, now, *key_params, machine_id]
              + [*owner, *group_params, *key_params, machine_id])
    return sql, params


def claim_pending_pg(user_id: str, machine_id: str, container_group_id, now, *, actor: str,
                     timestamp: str, project: str | None = None, key_hash: str | None = None):
    """(sql, params) of `_CLAIM_PENDING_PG`: one row (stale, key_ok, then the assigned job's
    columns, all NULL when nothing was assigned)."""
    statement, names = _claim_pending_pg_text(
        project is not None, container_group_id is not None, key_hash is not None,
        lease.sql_seconds("postgresql", "j.heartbeat_interval"))
    values = {"user": user_id, "project": project, "group": container_group_id, "now": now,
              "machine": machine_id, "key": key_hash, "actor": actor, "stamp": timestamp}
    return statement, [values[name] for name in names]


@functools.cache
def _claim_pending_pg_text(project: bool, group: bool, key: bool,
                           lease_sql: str) -> tuple[str, tuple[str, ...]]:
    """The text of `_CLAIM_PENDING_PG` for one variant with its parameters numbered ($1, $2,
    ...), and their names in that order. Built once: it runs on every poll, and formatting
    2 KB of SQL cost the caller more CPU than PostgreSQL spends executing it."""
    group_sql = ("j.container_group_id = %(group)s::text" if group
                 else "j.container_group_id IS NULL")
    project_sql = " AND j.project = %(project)s::text" if project else ""
    key_ok = _key_valid("%(key)s::text", "%(now)s::timestamp") if key else "true"
    statement = _CLAIM_PENDING_PG.format(project=project_sql, group=group_sql, key_ok=key_ok,
                                         lease=lease_sql)
    names = tuple(name for name in _CLAIM_PARAMETERS if f"%({name})s" in statement)
    for number, name in enumerate(names, start=1):
        statement = statement.replace(f"%({name})s", f"${number}")
    return statement, names


@functools.lru_cache(maxsize=256)
def prepared(statement: str) -> tuple[str, str]:
    """(name, PREPARE text) for a PostgreSQL statement written with %s placeholders, numbered
    here in order (a statement numbered already, as the claim is, passes as it is). The name
    follows from the text, so a connection prepares each variant once, and every process (and
    the benchmark's bare loop) names it alike."""
    name = "kelpie_" + hashlib.sha1(statement.encode()).hexdigest()[:16]
    numbered, count = statement, 0
    while "%s" in numbered:
        count += 1
        numbered = numbered.replace("%s", f"${count}", 1)
    return name, f"PREPARE {name} AS {numbered}"


def execute_prepared(name: str, params: list, before: str = "") -> tuple[str, list]:
    """(sql, params) running the statement `prepared` named, after `before` (such as
    NO_FLUSH_WAIT) in the same round trip."""
    return f"{before}EXECUTE {name} ({', '.join(['%s'] * len(params))})", params


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
