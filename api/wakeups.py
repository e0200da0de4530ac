"""Long-poll waiters for `GET /work?wait=N`, the signals that wake them, and what an API process
knows about container groups with nothing to claim.

A waiter is a parked coroutine: an asyncio Future in its group's queue, no thread and no
database work while it waits. It is woken when a job may have become claimable in its group:

- PostgreSQL: the statement that makes a job claimable (a submission, a requeue after a
  failure or node failure) also runs `pg_notify('kelpie_work', <container group id>)` in its
  own transaction, so the notification goes out on commit and only then; every API process, on
  any host, LISTENs on one dedicated connection (`Listener`) and wakes its own waiters.
- SQLite (one host): the same call wakes this process's waiters directly. Several Sanic worker
  processes sharing one SQLite file do not see each other's signals: the sweeper below covers
  them with a re-check once a second.
- A lease that runs out makes its job claimable without any statement: the sweeper (one
  indexed query a second per process, and only while something waits here) finds groups with
  an expired lease and wakes them.

One wake-up wakes one waiter (the oldest) of the group, not all of them: 1,000 agents parked on
one group must not make 1,000 claims for one job. A waiter that claims something passes the
wake-up on to the next one (a batch may have brought more jobs); one that finds nothing ends
the chain (the job went to someone else). The claim's own SQL fences, so whoever loses simply
waits on. A waiter that could not take the job it was woken for (banned from it) is rotated to
the back; the sweeper's next pass and every waiter's own deadline bound how long such a job can
sit while another waiter could take it.

The empty cache: after a claim found nothing, the process remembers "nothing here for this
caller in this group" until the group's next wake-up (or KELPIE_EMPTY_CACHE_TTL_S, a safety
net), so a plain poll of a known-empty group costs no claim statement. It is only trusted while
the process is sure to hear every wake-up: on PostgreSQL while the listener is connected.
"""

import asyncio
import collections
import functools
import logging
import time

from prometheus_client import Gauge

from api import db, keys

log = logging.getLogger("kelpie.wakeups")

CHANNEL = "kelpie_work"
# The payload for jobs without a container group (NOTIFY payloads are text; "" is the None group).
NO_GROUP = ""
SWEEP_INTERVAL_S = 1.0
EMPTY_CACHE_MAX = 100_000
RECONNECT_MAX_S = 5.0

WAITERS = Gauge("kelpie_work_waiters", "GET /work?wait requests parked in this process "
                "(summed over processes)", multiprocess_mode="livesum")


def group_key(container_group_id: str | None) -> str:
    return NO_GROUP if container_group_id is None else container_group_id


class Hub:
    """This process's waiters, by container group, and its empty cache."""

    def __init__(self):
        self.loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, collections.OrderedDict] = {}
        self._sequence = 0
        self._generation: dict[str, int] = collections.defaultdict(int)
        self._empty: dict[tuple, tuple[int, float]] = {}
        self.empty_ttl_s = 0.0  # KELPIE_EMPTY_CACHE_TTL_S, set when the server starts
        # Whether every wake-up of every process reaches this one (SQLite with one process:
        # yes; PostgreSQL: while the listener is connected).
        self.complete = False
        # Set when the server stops: waiters answer [] at once instead of holding shutdown.
        self.closing = False
        self.count = 0
        # Reads the notifications already sent to this process (the listener's, while it is
        # connected): called before the empty cache answers.
        self.drain = None

    # --- waiters ---

    def park(self, key: str) -> tuple[int, asyncio.Future]:
        self._sequence += 1
        future = self.loop.create_future()
        self._waiters.setdefault(key, collections.OrderedDict())[self._sequence] = future
        self.count += 1
        WAITERS.inc()
        return self._sequence, future

    def unpark(self, key: str, ticket: int) -> None:
        queue = self._waiters.get(key)
        if queue is not None and queue.pop(ticket, None) is not None:
            self.count -= 1
            WAITERS.dec()
            if not queue:
                del self._waiters[key]

    def groups_waited_on(self) -> list[str]:
        return list(self._waiters)

    def wake(self, key: str, n: int = 1) -> None:
        """A job may be claimable in group `key`: wake its `n` oldest waiters and forget
        what the empty cache knew about the group. Runs on the event loop."""
        self._generation[key] += 1
        queue = self._waiters.get(key)
        while queue and n > 0:
            ticket, future = queue.popitem(last=False)
            self.count -= 1
            WAITERS.dec()
            if not future.done():
                future.set_result(True)
                n -= 1
        if queue is not None and not queue:
            del self._waiters[key]

    def wake_all(self) -> None:
        """Something may have been missed (the listener reconnected): everyone looks again."""
        for key in list(self._waiters):
            self.wake(key, n=len(self._waiters[key]))
        self._generation = collections.defaultdict(int, {k: v + 1 for k, v
                                                         in self._generation.items()})
        self._empty.clear()

    def wake_threadsafe(self, key: str) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.wake, key)

    # --- the empty cache ---

    def generation(self, key: str) -> int:
        return self._generation[key]

    def known_empty(self, entry: tuple, key: str) -> bool:
        if not self.complete:
            return False
        if self.drain is not None:
            # A notification (a job submitted, a key revoked) committed before this request
            # arrived is read now, not at the event loop's next turn: answering [] from the
            # cache involves no await, so without this it could run first.
            self.drain()
            if not self.complete:  # the listener's connection was found dead just now
                return False
        seen = self._empty.get(entry)
        if seen is None:
            return False
        generation, at = seen
        if generation != self._generation[key] or time.monotonic() - at > self.empty_ttl_s:
            self._empty.pop(entry, None)
            return False
        return True

    def remember_empty(self, entry: tuple, generation: int) -> None:
        """`generation` is the group's generation read before the claim started, so a wake-up
        that arrived during the claim makes the entry stale at once."""
        if len(self._empty) >= EMPTY_CACHE_MAX:
            self._empty.clear()
        self._empty[entry] = (generation, time.monotonic())

    def still_empty(self, entry: tuple, key: str, generation: int) -> None:
        """A wait that ended with no wake-up of its group: what the claim before it found
        (nothing) still holds, so the entry is stamped afresh and the caller's next poll,
        right after this answer, costs no claim statement. Without this, every re-poll after
        a wait longer than the cache's TTL ran the claim: 333 statements a second for 10,000
        idle agents at wait=30, enough to back the protocol lane up on a slow database."""
        seen = self._empty.get(entry)
        if self.complete and seen is not None and seen[0] == generation == self._generation[key]:
            self._empty[entry] = (generation, time.monotonic())

    def forget_empty(self, entry: tuple) -> None:
        self._empty.pop(entry, None)


hub = Hub()


# --- signalling (called inside the transaction that makes a job claimable) -------------------

def job_claimable(container_group_ids) -> None:
    """Say that jobs in these groups became claimable. Call it inside the transaction that made
    them so: on PostgreSQL the notification is sent when (and only if) it commits."""
    keys = sorted({group_key(group) for group in container_group_ids})
    if db.is_postgres():
        for key in keys:
            db.database.execute_sql("SELECT pg_notify(%s, %s)", (CHANNEL, key))
            # This process's own waiters and empty cache hear it at once too: the wake-up is
            # on the event loop before the submitter's answer, so the next poll that reaches
            # this process claims, whereas the notification may still be on its way to the
            # listener. It comes before the commit, so a claim it causes may find nothing:
            # the notification, sent on commit, wakes the group again.
            hub.wake_threadsafe(key)
    else:
        # The waiter's claim takes SQLite's write lock, so it sees this transaction's rows
        # once they are committed, even if it is woken a moment before the commit.
        for key in keys:
            hub.wake_threadsafe(key)


# --- the PostgreSQL listener ------------------------------------------------------------------

class Listener:
    """One LISTEN connection per API process, read by the event loop (add_reader): no thread.
    When it drops it is reconnected, and everyone is woken, since notifications sent meanwhile
    are lost."""

    def __init__(self, settings):
        self.settings = settings
        self.connection = None
        self.stopped = False
        self.connected = asyncio.Event()
        self._fd = -1

    def _connect(self):
        import psycopg2
        import psycopg2.extensions

        params = db.database.obj.connect_params
        connection = psycopg2.connect(database=db.database.obj.database, **params)
        connection.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")
            cursor.execute(f"LISTEN {keys.REVOKED_CHANNEL}")
        return connection

    async def run(self):
        loop = asyncio.get_running_loop()
        delay = 0.1
        while not self.stopped:
            try:
                connection = await loop.run_in_executor(None, self._connect)
            except Exception as error:  # noqa: BLE001 - any failure: try again later
                log.warning("work listener cannot connect (%s); retrying in %.1fs",
                            str(error).strip().splitlines()[0] if str(error) else error, delay)
                await asyncio.sleep(delay)
                delay = min(RECONNECT_MAX_S, delay * 2)
                continue
            delay = 0.1
            self.connection = connection
            # Kept: psycopg2 refuses fileno() once it has marked the connection closed.
            fd = self._fd = connection.fileno()
            lost = loop.create_future()
            loop.add_reader(fd, self._readable, lost)
            hub.drain = functools.partial(self._readable, lost)
            hub.complete = True
            self.connected.set()
            # Anything committed while nobody listened has been missed: look again, and read
            # every key afresh (a revocation may be among what was missed).
            keys.forget()
            hub.wake_all()
            try:
                await lost
            finally:
                hub.complete = False
                hub.drain = None
                self.connected.clear()
                loop.remove_reader(fd)
                connection.close()
                self.connection = None
            if not self.stopped:
                log.warning("work listener connection lost; reconnecting")
                hub.wake_all()

    def _readable(self, lost: asyncio.Future) -> None:
        connection = self.connection
        if connection is None or lost.done():
            return
        try:
            connection.poll()
        except Exception:  # noqa: BLE001 - the connection is gone, whatever the error says
            asyncio.get_running_loop().remove_reader(self._fd)  # no busy loop on a dead socket
            hub.complete = False  # at once: a drain() caller must not trust the cache now
            if not lost.done():
                lost.set_result(None)
            return
        while connection.notifies:
            note = connection.notifies.pop(0)
            if note.channel == keys.REVOKED_CHANNEL:
                keys.forget(note.payload)
            else:
                hub.wake(note.payload)

    def stop(self):
        self.stopped = True


# --- the sweeper ------------------------------------------------------------------------------

def _claimable_groups(keys: list[str], now, include_pending: bool) -> list[str]:
    """Of the groups `keys`, those with a running job whose lease ran out (and, when asked,
    a pending job). One indexed query (jobs_stale on PostgreSQL: running jobs by group and
    lease; jobs_lease on SQLite)."""
    groups = [key for key in keys if key != NO_GROUP]
    found = set()
    p = "%s" if db.is_postgres() else "?"
    statuses = f"(j.status = 'running' AND j.lease_expires < {p})"
    params: list = [now]
    if include_pending:
        statuses = f"(j.status = 'pending' OR {statuses})"
    conditions = []
    if groups:
        conditions.append(f"j.container_group_id IN ({', '.join([p] * len(groups))})")
        params.extend(groups)
    if NO_GROUP in keys:
        conditions.append("j.container_group_id IS NULL")
    sql = (f"SELECT DISTINCT j.container_group_id FROM jobs j WHERE {statuses}"
           f" AND ({' OR '.join(conditions)})")
    for (group,) in db.database.execute_sql(sql, params).fetchall():
        found.add(group_key(group))
    return sorted(found)


async def sweeper(app):
    """Wake groups whose jobs became claimable without a signal: leases that ran out (both
    databases) and, on SQLite, jobs submitted through another process sharing the file."""
    include_pending = not db.is_postgres()
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_S)
        keys = hub.groups_waited_on()
        if not keys:
            continue
        try:
            for chunk_start in range(0, len(keys), 500):
                found = await db.run_protocol(_claimable_groups,
                                              keys[chunk_start:chunk_start + 500],
                                              db.utcnow(), include_pending)
                for key in found:
                    hub.wake(key)
        except Exception as error:  # noqa: BLE001 - a database hiccup: next pass
            log.warning("work sweeper: %s", error)
