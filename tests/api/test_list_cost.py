"""List pages bounded in cost (issue 11): whatever a tenant holds, one GET /jobs page reads at
most the listing window (KELPIE_LIST_WINDOW) + page_size rows, counted with the plans
PostgreSQL actually runs for the statements of api/queue.py list_jobs; pages past the window
are refused with a 400 that names `page`; `_count` stays exact below the window.

A noisy tenant of 50,000 jobs and a window of 10,000: before this change the count alone read
all 50,000 rows on every page, and page=50 with page_size=1000 walked 50,000 rows to skip them.
"""

import json
import sqlite3
import time
import urllib.error
import urllib.request

import psycopg2
import pytest
from peewee import SQL, PostgresqlDatabase, Select, SqliteDatabase, fn

from api import queue
from api.models import Job
from api.principal import Principal
from tests.api.jobdefs import sync_job
from tests.support import postgres
from tests.support.api_process import ApiProcess

WINDOW = 10_000
NOISY_JOBS = 50_000
PAGE_SIZE = 1000


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    name, url = postgres.create_database("listcost")
    server = ApiProcess(url, env={"KELPIE_LIST_WINDOW": str(WINDOW)},
                        log_path=tmp_path_factory.mktemp("api") / "api.log")
    server.start()
    connection = psycopg2.connect(f"{postgres.ADMIN_DSN.replace('dbname=postgres', '')} "
                                  f"dbname={name}")
    connection.autocommit = True
    try:
        yield server, connection, name
    finally:
        connection.close()
        server.stop()
        postgres.drop_database(name)


@pytest.fixture(scope="module")
def noisy(pg):
    """A tenant with NOISY_JOBS jobs in four container groups: one batch of 1,000 submitted
    through the API, copied in SQL to the full count (each copy a new id, one second
    later; fifty batches through the API took over a minute of the suite); then, in SQL, most
    of them completed and 10,000 failed (a tenant's long history)."""
    server, connection, _ = pg
    started = time.monotonic()
    key = server.create_user("noisy")
    status, _ = server.request("POST", "/jobs/batch",
                               [sync_job(container_group_id=f"g{index % 4}")
                                for index in range(1000)], key=key)
    assert status == 202
    with connection.cursor() as cursor:
        cursor.execute("SELECT DISTINCT user_id FROM jobs")
        [(user_id,)] = cursor.fetchall()
        cursor.execute("SELECT column_name FROM information_schema.columns "
                       "WHERE table_name = 'jobs' AND column_name NOT IN ('id', 'created')")
        columns = ", ".join(f'"{name}"' for (name,) in cursor.fetchall())
        cursor.execute(
            f"INSERT INTO jobs (id, created, {columns}) "
            f"SELECT gen_random_uuid()::text, created + copy * interval '1 second', {columns} "
            "FROM jobs, generate_series(1, %s) AS copy WHERE user_id = %s",
            (NOISY_JOBS // 1000 - 1, user_id))
        cursor.execute("SELECT count(*) FROM jobs WHERE user_id = %s", (user_id,))
        assert cursor.fetchone()[0] == NOISY_JOBS
        cursor.execute(
            "UPDATE jobs SET status = CASE WHEN n <= 10000 THEN 'failed' ELSE 'completed' END "
            "FROM (SELECT id AS numbered, row_number() OVER (ORDER BY created) AS n FROM jobs "
            "WHERE user_id = %s) AS numbering "
            "WHERE jobs.id = numbering.numbered AND n <= %s",
            (user_id, NOISY_JOBS - 1000))
        cursor.execute("VACUUM ANALYZE jobs")  # the visibility map lets counts skip the heap
    print(f"{NOISY_JOBS} jobs in {time.monotonic() - started:.0f} s")
    return key, user_id


def _get(server, path, key):
    """(status, body, headers) of one GET."""
    request = urllib.request.Request(server.url + path, headers={"X-Kelpie-Key": key})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), error.headers


def _plan(connection, database_name, query) -> dict:
    """EXPLAIN ANALYZE of a peewee query as PostgreSQL runs it."""
    sql, params = PostgresqlDatabase(database_name).get_sql_context().sql(query).query()
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, params)
        return cursor.fetchone()[0][0]["Plan"]


def _nodes(plan):
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _summary(plan) -> list:
    return [(node["Node Type"], node.get("Index Name"), node["Actual Rows"],
             node.get("Rows Removed by Filter")) for node in _nodes(plan)]


def _rows_read(plan) -> int:
    """Rows the plan's leaves (the scans that read a table or index) produced, with those their
    filters threw away: what a statement cost in rows."""
    return sum((node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
                + node.get("Rows Removed by Index Recheck", 0)) * node["Actual Loops"]
               for node in _nodes(plan) if not node.get("Plans"))


LISTINGS = [
    {},
    {"ascending": True},
    {"status": "completed"},
    {"container_group_id": "g1"},
    {"status": "failed"},
    {"container_group_id": "g2", "status": "completed"},
]


@pytest.mark.parametrize("listing", LISTINGS, ids=lambda listing: ",".join(listing) or "all")
def test_the_deepest_page_reads_at_most_the_window(pg, noisy, listing):
    _, connection, name = pg
    _, user_id = noisy
    deepest = WINDOW // PAGE_SIZE
    assert queue.list_window_refusal(deepest, PAGE_SIZE, WINDOW) is None
    # Bound to a PostgreSQL database only to render the SQL as the API would.
    with PostgresqlDatabase(name).bind_ctx([Job]):
        counted, rows = queue.list_queries(Principal(user_id), page=deepest,
                                           page_size=PAGE_SIZE, window=WINDOW, **listing)
    count_plan, page_plan = _plan(connection, name, counted), _plan(connection, name, rows)
    count_read, page_read = _rows_read(count_plan), _rows_read(page_plan)
    print(f"{listing or 'all'}: count read {count_read} rows, page {deepest} read {page_read} "
          f"rows (tenant holds {NOISY_JOBS}); buffers "
          f"{count_plan['Shared Hit Blocks'] + count_plan.get('Shared Read Blocks', 0)} + "
          f"{page_plan['Shared Hit Blocks'] + page_plan.get('Shared Read Blocks', 0)}")
    assert count_read <= WINDOW + 1, _summary(count_plan)
    # The OFFSET's index entries, then the page's own rows by primary key.
    assert page_read <= WINDOW + PAGE_SIZE, _summary(page_plan)


def test_the_data_is_big_enough_to_tell(pg, noisy):
    """The statements before the bound read the whole tenant: this data would catch them."""
    _, connection, name = pg
    _, user_id = noisy
    with PostgresqlDatabase(name).bind_ctx([Job]):
        query = Job.select().where(Job.user == user_id)
        unbounded_count = query.select(SQL("1")).order_by().alias("all_rows")
        unbounded_count = Select([unbounded_count], [fn.COUNT(SQL("1"))])
    read = _rows_read(_plan(connection, name, unbounded_count))
    print(f"an unbounded count reads {read} rows")
    assert read >= NOISY_JOBS
    # (The count may be a sequential scan: the planner's choice when the tenant is most of the
    # table; the LIMIT stops it all the same, and count_read includes rows it filtered out.)


def test_count_is_capped_at_the_window_and_says_so(pg, noisy):
    server, _, _ = pg
    key, _ = noisy
    status, body, headers = _get(server, f"/jobs?page_size={PAGE_SIZE}", key)
    assert status == 200 and body["_count"] == WINDOW and len(body["jobs"]) == PAGE_SIZE
    assert headers["X-Kelpie-Count-Capped"] == "true"
    # Below the window the count is exact and carries no header: a quarter of the 10,000
    # failed jobs are in g1.
    status, body, headers = _get(server, "/jobs?status=failed&container_group_id=g1&page_size=1",
                                 key)
    assert status == 200 and body["_count"] == 2500, body["_count"]
    assert headers.get("X-Kelpie-Count-Capped") is None


def test_a_small_tenant_sees_the_exact_count(pg):
    server, _, _ = pg
    key = server.create_user("small")
    for _ in range(3):
        assert server.request("POST", "/jobs", sync_job(), key=key)[0] == 202
    status, body, headers = _get(server, "/jobs?page_size=2&page=2", key)
    assert status == 200 and body["_count"] == 3 and len(body["jobs"]) == 1
    assert headers.get("X-Kelpie-Count-Capped") is None


def test_a_page_past_the_window_is_refused_naming_page(pg, noisy):
    server, _, _ = pg
    key, _ = noisy
    last = WINDOW // PAGE_SIZE
    status, body, _ = _get(server, f"/jobs?page_size={PAGE_SIZE}&page={last}", key)
    assert status == 200 and len(body["jobs"]) == PAGE_SIZE
    for path in (f"/jobs?page_size={PAGE_SIZE}&page={last + 1}",
                 f"/jobs?page=10000&page_size={PAGE_SIZE}",
                 f"/jobs?page={WINDOW + 1}"):  # default page_size 100: still past the window
        status, body, _ = _get(server, path, key)
        assert status == 400, (path, body)
        assert body["error"] and body["field"] == "page" and str(WINDOW) in body["message"], body
    # The same is refused for a tenant with no jobs at all: the limit is on the request.
    empty = server.create_user("empty")
    status, body, _ = _get(server, f"/jobs?page_size={PAGE_SIZE}&page={last + 1}", empty)
    assert status == 400 and body["field"] == "page"


def test_the_window_is_in_the_openapi_document(pg):
    server, _, _ = pg
    status, document = server.request("GET", "/docs/openapi.json")
    assert status == 200
    [page] = [parameter for parameter in document["paths"]["/jobs"]["get"]["parameters"]
              if parameter["name"] == "page"]
    # The document shows the default window (DEFAULTS), as it does max_page_size.
    from api.schemas import DEFAULTS
    assert page["schema"]["maximum"] == DEFAULTS.list_window
    assert str(DEFAULTS.list_window) in page["description"] and "400" in page["description"]


@pytest.fixture(scope="module")
def sqlite_api(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sqlite")
    server = ApiProcess(f"sqlite:///{directory / 'kelpie.db'}", log_path=directory / "api.log")
    server.start()
    key = server.create_user("sqlite-lister")
    assert server.request("POST", "/jobs", sync_job(), key=key)[0] == 202
    yield server, directory / "kelpie.db"
    server.stop()


@pytest.mark.parametrize("listing", LISTINGS, ids=lambda listing: ",".join(listing) or "all")
def test_sqlite_serves_every_listing_from_an_index_in_order(sqlite_api, listing):
    """SQLite has no EXPLAIN ANALYZE; its plan shows the same: the page's ids come from a
    covering index in the listing's order (no temporary B-tree to sort the tenant's jobs),
    so the OFFSET walks index entries and stops."""
    _, path = sqlite_api
    database = SqliteDatabase(str(path))
    connection = sqlite3.connect(path)
    try:
        [(user_id,)] = connection.execute("SELECT DISTINCT user_id FROM jobs").fetchall()
        with database.bind_ctx([Job]):
            _, rows = queue.list_queries(Principal(user_id), page=3, page_size=PAGE_SIZE,
                                         window=WINDOW, **listing)
        sql, params = database.get_sql_context().sql(rows).query()
        plan = [row[-1] for row in connection.execute("EXPLAIN QUERY PLAN " + sql, params)]
    finally:
        connection.close()
    print(listing or "all", plan)
    assert any("COVERING INDEX jobs_" in step for step in plan), plan
    # The outer ORDER BY sorts the page's own rows (page_size of them), nothing more.
    assert sum("TEMP B-TREE" in step for step in plan) <= 1, plan
    assert not any(step.startswith("SCAN jobs") and "INDEX" not in step for step in plan), plan
