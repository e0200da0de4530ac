"""Every setting of the agent, read from the environment in one place.

`SETTINGS` is the single list: `--help` and docs/agent.md are written from it, and `load()`
validates each value so a bad configuration stops the agent before it polls.
"""

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse


class ConfigError(Exception):
    """A setting is missing or malformed; the message is the one line the agent exits with."""


@dataclass(frozen=True)
class Setting:
    names: tuple[str, ...]  # the first that is set wins; later names are accepted aliases
    default: str | None
    help: str


# The original worker's directories for legacy jobs. Not under /kelpie: that is where the
# documented Dockerfile puts the executable itself, so nothing could be created beneath it.
LEGACY_DIRS = {"INPUT_DIR": "/input", "CHECKPOINT_DIR": "/checkpoint", "OUTPUT_DIR": "/output"}

SETTINGS: list[Setting] = [
    Setting(("KELPIE_API_URL",), None, "Root URL of the Kelpie API (required)."),
    Setting(("KELPIE_API_KEY",), None,
            "Kelpie API key, sent as X-Kelpie-Key. Takes precedence over the Salad credentials."),
    Setting(("SALAD_API_KEY",), None,
            "Salad API key (Salad-Api-Key), used when KELPIE_API_KEY is not set; needs "
            "SALAD_PROJECT (and SALAD_ORGANIZATION, else the IMDS token's organization)."),
    Setting(("SALAD_ORGANIZATION", "SALAD_ORGANIZATION_NAME"), None,
            "Salad organization, sent as Salad-Organization with SALAD_API_KEY; unset: the "
            "organization named by the instance-metadata JWT."),
    Setting(("SALAD_PROJECT", "SALAD_PROJECT_NAME"), None,
            "Salad project, sent as Salad-Project (with SALAD_API_KEY or the IMDS JWT)."),
    Setting(("SALAD_MACHINE_ID",), "<hostname>",
            "This node's machine id, sent with every call. With the instance token as the only "
            "credential: the token's salad_machine_id (a different value here stops the agent)."),
    Setting(("SALAD_CONTAINER_GROUP_ID",), None,
            "Container group id; the agent only receives jobs of this group (none: jobs without "
            "a group). With the instance token as the only credential: the token's "
            "salad_container_group_id (a different value here stops the agent)."),
    Setting(("HEARTBEAT_INTERVAL_S",), "10",
            "Seconds between polls for work while idle. While a job runs, heartbeats follow the "
            "job's own heartbeat_interval."),
    Setting(("MAX_RETRIES",), "5",
            "Attempts for one API call or one object transfer before giving that attempt up "
            "(polls and heartbeats simply try again later)."),
    Setting(("MAX_JOB_FAILURES",), "3",
            "Failed jobs on this node after which the agent asks IMDS to reallocate it and exits; "
            "also the node's own failures (storage, disk, work directory) after which it exits "
            "with status 3."),
    Setting(("KELPIE_MAX_AUTH_FAILURES",), "10",
            "Consecutive polls the API refuses (401, 403, 404: wrong key, URL or identity) "
            "after which the agent exits non-zero with the reason. Between them it waits twice "
            "as long each time, up to KELPIE_AUTH_BACKOFF_MAX_S."),
    Setting(("KELPIE_AUTH_BACKOFF_MAX_S",), "300",
            "Longest wait between two polls the API refused."),
    Setting(("MAX_TIME_WITH_NO_WORK_S",), "0",
            "Idle seconds after which the agent asks IMDS to reallocate the node and exits "
            "(0: never)."),
    Setting(("KELPIE_RECREATE_BETWEEN_JOBS",), "false",
            "true: exit after each job so the container is recreated fresh for the next one."),
    Setting(("KELPIE_STATE_FILE",), "/tmp/kelpie-state.json",
            "JSON file with the current job, exit code, active uploads and downloads "
            "(empty: none)."),
    Setting(("KELPIE_LOG_LEVEL",), "INFO", "DEBUG, INFO, WARNING or ERROR."),
    Setting(("KELPIE_SHUTDOWN_GRACE_S",), "20",
            "On SIGTERM/SIGINT: seconds for the child to exit and checkpoints to finish "
            "uploading before the agent exits anyway."),
    Setting(("KELPIE_KILL_GRACE_S",), "10",
            "On cancel: seconds between SIGINT, SIGTERM and SIGKILL to the job's process group "
            "(past a job's timeout_s: SIGTERM, then SIGKILL)."),
    Setting(("KELPIE_REPORT_TIMEOUT_S",), "600",
            "How long a completed/failed report keeps being retried through an API outage."),
    Setting(("KELPIE_WORK_DIR",), "<current directory>",
            "Directory the command runs in; relative sync local_path values are resolved here."),
    Setting(("INPUT_DIR",), LEGACY_DIRS["INPUT_DIR"],
            "Legacy jobs: where inputs are downloaded."),
    Setting(("CHECKPOINT_DIR",), LEGACY_DIRS["CHECKPOINT_DIR"],
            "Legacy jobs: checkpoints downloaded before and uploaded while the job runs."),
    Setting(("OUTPUT_DIR",), LEGACY_DIRS["OUTPUT_DIR"],
            "Legacy jobs: outputs uploaded as they appear."),
    Setting(("KELPIE_IMDS_URL",), "http://169.254.169.254",
            "Salad instance metadata service (header Metadata: true)."),
    Setting(("FILE_WATCHER_MODE",), "auto",
            "auto (inotify where available, else polling), inotify or poll."),
    Setting(("FILE_WATCHER_POLL_INTERVAL_S",), "0.2",
            "Polling mode: seconds between scans of the watched directories."),
    Setting(("FILE_WATCHER_DEBOUNCE_S",), "0.05",
            "A closed file is uploaded after this quiet time, so a temp file renamed into place "
            "right after closing is uploaded once, under its final name."),
    Setting(("FILE_WATCHER_RESCAN_S",), "5",
            "Seconds between safety rescans of watched directories (catches missed events)."),
    Setting(("KELPIE_COMMIT_QUIET_S",), "1",
            "Seconds a checkpoint directory (a top-level directory of a during sync) must stay "
            "unchanged, with no file in it open for writing, before it is committed as one "
            "checkpoint a restore may use."),
    Setting(("KELPIE_WRITER_MARGIN_S",), "0.5",
            "A file completed this many seconds or less before its writer died abnormally (or "
            "before the agent forwarded a signal) counts as written by a dying writer: skipped."),
    Setting(("KELPIE_TRANSFER_CONCURRENCY",), "32", "Files transferred in parallel."),
    Setting(("KELPIE_PART_CONCURRENCY",), "8",
            "Parts of large files transferred in parallel (across all large files)."),
    Setting(("KELPIE_MULTIPART_THRESHOLD_MB",), "16",
            "Files at least this large go up and down in parallel parts."),
    Setting(("KELPIE_MULTIPART_CHUNK_MB",), "8", "Part size for multipart transfers."),
    Setting(("KELPIE_FAST_SMALL_TRANSFERS",), "true",
            "Send small objects on a custom endpoint with the agent's own lean signed requests "
            "instead of botocore's (about 3x less CPU per object); false: botocore for all."),
    Setting(("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"), None,
            "S3-compatible endpoint (R2, SeaweedFS, MinIO); unset: AWS S3."),
    Setting(("AWS_REGION", "AWS_DEFAULT_REGION"), "us-east-1", "Region used to sign requests."),
    Setting(("AWS_ACCESS_KEY_ID",), None,
            "Credentials; AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, "
            "AWS_SHARED_CREDENTIALS_FILE and the rest of botocore's chain work as usual."),
    Setting(("AWS_CA_BUNDLE",), None, "CA bundle for a TLS endpoint with a private CA."),
    Setting(("KELPIE_S3_ADDRESSING_STYLE",), "auto",
            "auto, path or virtual. auto uses path style for a custom endpoint."),
]

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Config:
    api_url: str
    kelpie_api_key: str | None
    salad_api_key: str | None
    salad_organization: str | None
    salad_project: str | None
    machine_id: str
    container_group_id: str | None
    idle_poll_interval: float
    max_retries: int
    max_job_failures: int
    max_auth_failures: int
    auth_backoff_max: float
    max_time_with_no_work: float
    recreate_between_jobs: bool
    state_file: Path | None
    log_level: str
    shutdown_grace: float
    kill_grace: float
    report_timeout: float
    work_dir: Path
    input_dir: Path
    checkpoint_dir: Path
    output_dir: Path
    imds_url: str
    watcher_mode: str
    watcher_poll_interval: float
    watcher_debounce: float
    watcher_rescan: float
    commit_quiet: float
    writer_margin: float
    transfer_concurrency: int
    part_concurrency: int
    multipart_threshold: int
    multipart_chunksize: int
    fast_small_transfers: bool
    s3_endpoint_url: str | None
    s3_region: str
    s3_ca_bundle: str | None
    s3_addressing_style: str
    environ: dict = field(default_factory=dict, repr=False)


def _get(env: dict, *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value is not None and value != "":
            return value
    return None


def _number(env, name, default, kind=float, minimum=0.0):
    raw = _get(env, name)
    if raw is None:
        return kind(default)
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a {kind.__name__}") from None
    if value < minimum:
        raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
    return value


def _bool(env, name, default: bool) -> bool:
    raw = _get(env, name)
    if raw is None:
        return default
    if raw.lower() in TRUE:
        return True
    if raw.lower() in FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (true/false)")


def _url(env, names, default=None, required=False) -> str | None:
    raw = _get(env, *names) or default
    if raw is None:
        if required:
            raise ConfigError(f"{names[0]} is required")
        return None
    parsed = urlparse(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"{names[0]}={raw!r} is not an http(s) URL")
    return raw.rstrip("/")


def load(environ: dict | None = None) -> Config:
    env = dict(os.environ if environ is None else environ)
    level = (_get(env, "KELPIE_LOG_LEVEL") or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"KELPIE_LOG_LEVEL={level!r} is not DEBUG, INFO, WARNING or ERROR")
    salad_api_key = _get(env, "SALAD_API_KEY")
    organization = _get(env, "SALAD_ORGANIZATION", "SALAD_ORGANIZATION_NAME")
    project = _get(env, "SALAD_PROJECT", "SALAD_PROJECT_NAME")
    kelpie_api_key = _get(env, "KELPIE_API_KEY")
    # The organization of a Salad API key defaults to the one the node's IMDS token names.
    if not kelpie_api_key and salad_api_key and not project:
        raise ConfigError("SALAD_API_KEY needs SALAD_PROJECT (sent as Salad-Project)")
    watcher_mode = (_get(env, "FILE_WATCHER_MODE") or "auto").lower()
    if watcher_mode not in ("auto", "inotify", "poll"):
        raise ConfigError(f"FILE_WATCHER_MODE={watcher_mode!r} is not auto, inotify or poll")
    addressing = (_get(env, "KELPIE_S3_ADDRESSING_STYLE") or "auto").lower()
    if addressing not in ("auto", "path", "virtual"):
        raise ConfigError(f"KELPIE_S3_ADDRESSING_STYLE={addressing!r} is not auto, path or virtual")
    state_file = env.get("KELPIE_STATE_FILE", "/tmp/kelpie-state.json")
    work_dir = Path(_get(env, "KELPIE_WORK_DIR") or os.getcwd()).absolute()
    ca_bundle = _get(env, "AWS_CA_BUNDLE")
    if ca_bundle and not Path(ca_bundle).is_file():
        raise ConfigError(f"AWS_CA_BUNDLE={ca_bundle!r} is not a file")
    mib = 1024 * 1024
    return Config(
        api_url=_url(env, ("KELPIE_API_URL",), required=True),
        kelpie_api_key=kelpie_api_key,
        salad_api_key=salad_api_key,
        salad_organization=organization,
        salad_project=project,
        machine_id=_get(env, "SALAD_MACHINE_ID") or socket.gethostname(),
        container_group_id=_get(env, "SALAD_CONTAINER_GROUP_ID"),
        idle_poll_interval=_number(env, "HEARTBEAT_INTERVAL_S", 10, minimum=0.01),
        max_retries=_number(env, "MAX_RETRIES", 5, int, minimum=1),
        max_job_failures=_number(env, "MAX_JOB_FAILURES", 3, int, minimum=1),
        max_auth_failures=_number(env, "KELPIE_MAX_AUTH_FAILURES", 10, int, minimum=1),
        auth_backoff_max=_number(env, "KELPIE_AUTH_BACKOFF_MAX_S", 300, minimum=0.01),
        max_time_with_no_work=_number(env, "MAX_TIME_WITH_NO_WORK_S", 0),
        recreate_between_jobs=_bool(env, "KELPIE_RECREATE_BETWEEN_JOBS", False),
        state_file=Path(state_file) if state_file else None,
        log_level=level,
        shutdown_grace=_number(env, "KELPIE_SHUTDOWN_GRACE_S", 20),
        kill_grace=_number(env, "KELPIE_KILL_GRACE_S", 10),
        report_timeout=_number(env, "KELPIE_REPORT_TIMEOUT_S", 600),
        work_dir=work_dir,
        input_dir=work_dir / (_get(env, "INPUT_DIR") or LEGACY_DIRS["INPUT_DIR"]),
        checkpoint_dir=work_dir / (_get(env, "CHECKPOINT_DIR") or LEGACY_DIRS["CHECKPOINT_DIR"]),
        output_dir=work_dir / (_get(env, "OUTPUT_DIR") or LEGACY_DIRS["OUTPUT_DIR"]),
        imds_url=_url(env, ("KELPIE_IMDS_URL",), default="http://169.254.169.254"),
        watcher_mode=watcher_mode,
        watcher_poll_interval=_number(env, "FILE_WATCHER_POLL_INTERVAL_S", 0.2, minimum=0.01),
        watcher_debounce=_number(env, "FILE_WATCHER_DEBOUNCE_S", 0.05),
        watcher_rescan=_number(env, "FILE_WATCHER_RESCAN_S", 5, minimum=0.1),
        commit_quiet=_number(env, "KELPIE_COMMIT_QUIET_S", 1),
        writer_margin=_number(env, "KELPIE_WRITER_MARGIN_S", 0.5),
        transfer_concurrency=_number(env, "KELPIE_TRANSFER_CONCURRENCY", 32, int, minimum=1),
        part_concurrency=_number(env, "KELPIE_PART_CONCURRENCY", 8, int, minimum=1),
        multipart_threshold=_number(env, "KELPIE_MULTIPART_THRESHOLD_MB", 16, int, minimum=5) * mib,
        multipart_chunksize=_number(env, "KELPIE_MULTIPART_CHUNK_MB", 8, int, minimum=5) * mib,
        fast_small_transfers=_bool(env, "KELPIE_FAST_SMALL_TRANSFERS", True),
        s3_endpoint_url=_url(env, ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")),
        s3_region=_get(env, "AWS_REGION", "AWS_DEFAULT_REGION") or "us-east-1",
        s3_ca_bundle=ca_bundle,
        s3_addressing_style=addressing,
        environ=env,
    )


def help_text() -> str:
    return _settings_help(SETTINGS)


def _settings_help(settings: list[Setting]) -> str:
    lines = ["Environment variables (first name wins, later names are aliases):", ""]
    for setting in settings:
        default = "" if setting.default is None else f" [default: {setting.default}]"
        lines.append(f"  {' / '.join(setting.names)}{default}")
        lines.append(f"      {setting.help}")
    return "\n".join(lines)


# --- the client (`kelpie jobs ...`): who to ask and as whom ---

CLIENT_SETTINGS: list[Setting] = [
    Setting(("KELPIE_API_URL",), None, "Root URL of the Kelpie API (required)."),
    Setting(("KELPIE_API_KEY",), None, "Your Kelpie API key, sent as X-Kelpie-Key."),
    Setting(("SALAD_API_KEY",), None,
            "Or a Salad API key (Salad-Api-Key), when KELPIE_API_KEY is not set; needs "
            "SALAD_ORGANIZATION and SALAD_PROJECT."),
    Setting(("SALAD_ORGANIZATION", "SALAD_ORGANIZATION_NAME"), None,
            "Salad organization, sent as Salad-Organization with SALAD_API_KEY."),
    Setting(("SALAD_PROJECT", "SALAD_PROJECT_NAME"), None,
            "Salad project, sent as Salad-Project with SALAD_API_KEY."),
]


@dataclass(frozen=True)
class ClientConfig:
    api_url: str
    auth_headers: dict = field(repr=False)  # never printed: it holds the key


def load_client(environ: dict | None = None) -> ClientConfig:
    """The client's settings. A user's own credentials only: the instance-metadata JWT is a
    worker's credential, so it is never used here."""
    env = dict(os.environ if environ is None else environ)
    api_url = _url(env, ("KELPIE_API_URL",), required=True)
    kelpie_api_key = _get(env, "KELPIE_API_KEY")
    if kelpie_api_key:
        return ClientConfig(api_url, {"X-Kelpie-Key": kelpie_api_key})
    salad_api_key = _get(env, "SALAD_API_KEY")
    if salad_api_key:
        organization = _get(env, "SALAD_ORGANIZATION", "SALAD_ORGANIZATION_NAME")
        project = _get(env, "SALAD_PROJECT", "SALAD_PROJECT_NAME")
        if not organization or not project:
            raise ConfigError("SALAD_API_KEY needs SALAD_ORGANIZATION and SALAD_PROJECT")
        return ClientConfig(api_url, {"Salad-Api-Key": salad_api_key,
                                      "Salad-Organization": organization,
                                      "Salad-Project": project})
    raise ConfigError("set KELPIE_API_KEY (or SALAD_API_KEY with SALAD_ORGANIZATION and "
                      "SALAD_PROJECT)")


def client_help_text() -> str:
    return _settings_help(CLIENT_SETTINGS)
