# The Kelpie coordination API. Build from the repository root:
#   docker build -f build/api.Dockerfile -t kelpie-api .
# Run against PostgreSQL:
#   docker run -p 8787:8787 -e DATABASE_URL=postgresql://user:pass@db:5432/kelpie \
#     -e KELPIE_ADMIN_KEY=... kelpie-api
# Migrations run at every start (they are versioned, so a start on an up-to-date database
# changes nothing); several replicas may share one database.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KELPIE_API_PORT=8787 \
    KELPIE_API_WORKERS=2

WORKDIR /app

# Dependencies first: this layer is rebuilt only when the pins change. psycopg2-binary and
# cryptography ship manylinux wheels, so no compiler is needed.
COPY requirements/api.txt requirements/api.txt
RUN pip install --no-cache-dir -r requirements/api.txt

# The API, plus the agent modules it shares so that each rule lives in one place: the version,
# and the `local_path` and pattern rules that the API checks at submission and the agent obeys.
COPY api/ api/
COPY agent/__init__.py agent/version.py agent/paths.py agent/pattern.py agent/

RUN useradd --system --uid 10001 --no-create-home kelpie
USER kelpie

EXPOSE 8787

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('KELPIE_API_PORT', '8787') + '/healthz', timeout=4)"]

# `exec` so the API is PID 1's direct replacement and receives `docker stop`'s SIGTERM.
CMD ["sh", "-c", "python -m api migrate && exec python -m api serve --host 0.0.0.0 --port \"$KELPIE_API_PORT\" --workers \"$KELPIE_API_WORKERS\""]
