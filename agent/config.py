"""Every setting of the agent, declared once.

Each field of `Config` carries its `Setting`: variable names, default, help and parser.
`load()`, `--help` and the README's table (tests/agent/settings_table.py) all come from those
declarations, and a bad value stops the agent with one line before it polls.
"""

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class ConfigError(Exception):
    """A setting is missing or malformed; the message is the one line the agent exits with."""


TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}
MIB = 1024 * 1024

# The original worker's directories for legacy jobs. Not under /kelpie: that is where the
# documented Dockerfile puts the executable itself, so nothing could be created beneath it.
LEGACY_DIRS = {"INPUT_DIR": "/input", "CHECKPOINT_DIR": "/checkpoint", "OUTPUT_DIR": "/output"}


# --- how one setting's text becomes a value: parse(name, text or None) -> value ---

def optional_text(name: str, raw: str | None) -> str | None:
    return raw


def number(kind=float, minimum=0.0, scale=1):
    def parse(name: str, raw: str | None):
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={raw!r} is not a {kind.__name__}") from None
        if value < minimum:
            raise ConfigError(f"{name}={raw!r} must be at least {minimum}")
        return value * scale
    return parse


def boolean(name: str, raw: str | None) -> bool:
    if raw.lower() in TRUE:
        return True
    if raw.lower() in FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (true/false)")


def url(required=False):
    def parse(name: str, raw: str | None) -> str | None:
        if raw is None:
            if required:
                raise ConfigError(f"{name} is required")
            return None
        parsed = urlparse(raw)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"{name}={raw!r} is not an http(s) URL")
        return raw.rstrip("/")
    return parse


def choice(*options: str, upper=False):
    def parse(name: str, raw: str | None) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in options:
            raise ConfigError(f"{name}={value!r} is not {', '.join(options[:-1])} or {options[-1]}")
        return value
    return parse


def existing_file(name: str, raw: str | None) -> str | None:
    if raw and not Path(raw).is_file():
        raise ConfigError(f"{name}={raw!r} is not a file")
    return raw


def hostname_unless_set(name: str, raw: str | None) -> str:
    return raw or socket.gethostname()


def directory_or_cwd(name: str, raw: str | None) -> Path:
    return Path(raw or os.getcwd()).absolute()


def path_or_none(name: str, raw: str | None) -> Path | None:
    return Path(raw) if raw else None


@dataclass(frozen=True)
class Setting:
    names: tuple[str, ...]  # the first that is set wins; later names are accepted aliases
    default: str | None  # text, read like a value from the environment; None: unset
    help: str
    parse: Callable[[str, str | None], Any] = optional_text
    shown_default: str | None = None  # for --help, when the default is worked out at start-up
    empty_means_none: bool = False  # "" is a value (none), not "unset, take the default"

    def read(self, env: dict):
        for name in self.names:
            raw = env.get(name)
            if raw is not None and (raw != "" or self.empty_means_none):
                return self.parse(name, raw)
        return self.parse(self.names[0], self.default)


def setting(names, default, help, parse=optional_text, **options):
    """A Config field read from the environment variable(s) `names` (a name or a tuple)."""
    names = (names,) if isinstance(names, str) else names
    return field(metadata={"setting": Setting(names, default, help, parse, **options)})


@dataclass(frozen=True)
class Config:
    """Every setting of the agent; each field's declaration is the one place for its variable,
    default, validation and help (`--help` and the README's table come from it)."""

    api_url: str = setting("KELPIE_API_URL", None, "Root URL of the Kelpie API (required).",
                           url(required=True))
    kelpie_api_key: str | None = setting(
        "KELPIE_API_KEY", None,
        "Kelpie API key, sent as X-Kelpie-Key. Takes precedence over the Salad credentials.")
    salad_api_key: str | None = setting(
        "SALAD_API_KEY", None,
        "Salad API key (Salad-Api-Key), used when KELPIE_API_KEY is not set; needs "
        "SALAD_PROJECT (and SALAD_ORGANIZATION, else the IMDS token's organization).")
    salad_organization: str | None = setting(
        ("SALAD_ORGANIZATION", "SALAD_ORGANIZATION_NAME"), None,
        "Salad organization, sent as Salad-Organization with SALAD_API_KEY; unset: the "
        "organization named by the instance-metadata JWT.")
    salad_project: str | None = setting(
        ("SALAD_PROJECT", "SALAD_PROJECT_NAME"), None,
        "Salad project, sent as Salad-Project (with SALAD_API_KEY or the IMDS JWT).")
    machine_id: str = setting(
        "SALAD_MACHINE_ID", None,
        "This node's machine id, sent with every call. With the instance token as the only "
        "credential: the token's salad_machine_id (a different value here stops the agent).",
        hostname_unless_set, shown_default="<hostname>")
    container_group_id: str | None = setting(
        "SALAD_CONTAINER_GROUP_ID", None,
        "Container group id; the agent only receives jobs of this group (none: jobs without "
        "a group). With the instance token as the only credential: the token's "
        "salad_container_group_id (a different value here stops the agent).")
    idle_poll_interval: float = setting(
        "HEARTBEAT_INTERVAL_S", "10",
        "Seconds between polls for work while idle. While a job runs, heartbeats follow the "
        "job's own heartbeat_interval.", number(minimum=0.01))
    poll_wait: float = setting(
        "KELPIE_POLL_WAIT_S", "20",
        "Seconds the API may hold an idle poll for work open until a job arrives (long "
        "poll, GET /work?wait=N; the server caps it at its KELPIE_MAX_POLL_WAIT_S). A job "
        "then starts as soon as it is submitted. 0: plain polling every "
        "HEARTBEAT_INTERVAL_S. Against a server that answers at once anyway, the agent "
        "waits HEARTBEAT_INTERVAL_S between polls as before.", number())
    max_retries: int = setting(
        "MAX_RETRIES", "5",
        "Attempts for one API call or one object transfer before giving that attempt up "
        "(polls and heartbeats simply try again later).", number(int, minimum=1))
    max_job_failures: int = setting(
        "MAX_JOB_FAILURES", "3",
        "Failed jobs on this node after which the agent asks IMDS to reallocate it and exits; "
        "also the node's own failures (storage, disk, work directory) after which it exits "
        "with status 3.", number(int, minimum=1))
    max_auth_failures: int = setting(
        "KELPIE_MAX_AUTH_FAILURES", "10",
        "Consecutive polls the API refuses (401, 403, 404: wrong key, URL or identity) "
        "after which the agent exits non-zero with the reason. Between them it waits twice "
        "as long each time, up to KELPIE_AUTH_BACKOFF_MAX_S.", number(int, minimum=1))
    auth_backoff_max: float = setting(
        "KELPIE_AUTH_BACKOFF_MAX_S", "300", "Longest wait between two polls the API refused.",
        number(minimum=0.01))
    max_time_with_no_work: float = setting(
        "MAX_TIME_WITH_NO_WORK_S", "0",
        "Idle seconds after which the agent asks IMDS to reallocate the node and exits "
        "(0: never).", number())
    recreate_between_jobs: bool = setting(
        "KELPIE_RECREATE_BETWEEN_JOBS", "false",
        "true: exit after each job so the container is recreated fresh for the next one.",
        boolean)
    state_file: Path | None = setting(
        "KELPIE_STATE_FILE", "/tmp/kelpie-state.json",
        "JSON file with the current job, exit code, active uploads and downloads "
        "(empty: none).", path_or_none, empty_means_none=True)
    log_level: str = setting("KELPIE_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR.",
                             choice("DEBUG", "INFO", "WARNING", "ERROR", upper=True))
    shutdown_grace: float = setting(
        "KELPIE_SHUTDOWN_GRACE_S", "20",
        "On SIGTERM/SIGINT: seconds for the child to exit and checkpoints to finish "
        "uploading before the agent exits anyway.", number())
    kill_grace: float = setting(
        "KELPIE_KILL_GRACE_S", "10",
        "On cancel: seconds between SIGINT, SIGTERM and SIGKILL to the job's process group "
        "(past a job's timeout_s: SIGTERM, then SIGKILL).", number())
    report_timeout: float = setting(
        "KELPIE_REPORT_TIMEOUT_S", "600",
        "How long a completed/failed report keeps being retried through an API outage.",
        number())
    work_dir: Path = setting(
        "KELPIE_WORK_DIR", None,
        "Directory the command runs in; relative sync local_path values are resolved here.",
        directory_or_cwd, shown_default="<current directory>")
    # Relative to work_dir (load() joins them).
    input_dir: Path = setting("INPUT_DIR", LEGACY_DIRS["INPUT_DIR"],
                              "Legacy jobs: where inputs are downloaded.", path_or_none)
    checkpoint_dir: Path = setting(
        "CHECKPOINT_DIR", LEGACY_DIRS["CHECKPOINT_DIR"],
        "Legacy jobs: checkpoints downloaded before and uploaded while the job runs.",
        path_or_none)
    output_dir: Path = setting("OUTPUT_DIR", LEGACY_DIRS["OUTPUT_DIR"],
                               "Legacy jobs: outputs uploaded as they appear.", path_or_none)
    imds_url: str = setting("KELPIE_IMDS_URL", "http://169.254.169.254",
                            "Salad instance metadata service (header Metadata: true).", url())
    watcher_mode: str = setting("FILE_WATCHER_MODE", "auto",
                                "auto (inotify where available, else polling), inotify or poll.",
                                choice("auto", "inotify", "poll"))
    watcher_poll_interval: float = setting(
        "FILE_WATCHER_POLL_INTERVAL_S", "0.2",
        "Polling mode: seconds between scans of the watched directories.", number(minimum=0.01))
    watcher_debounce: float = setting(
        "FILE_WATCHER_DEBOUNCE_S", "0.05",
        "A closed file is uploaded after this quiet time, so a temp file renamed into place "
        "right after closing is uploaded once, under its final name.", number())
    watcher_rescan: float = setting(
        "FILE_WATCHER_RESCAN_S", "5",
        "Seconds between safety rescans of watched directories (catches missed events).",
        number(minimum=0.1))
    commit_quiet: float = setting(
        "KELPIE_COMMIT_QUIET_S", "1",
        "Seconds a checkpoint directory (a top-level directory of a during sync) must stay "
        "unchanged, with no file in it open for writing, before it is committed as one "
        "checkpoint a restore may use.", number())
    writer_margin: float = setting(
        "KELPIE_WRITER_MARGIN_S", "0.5",
        "A file completed this many seconds or less before its writer died abnormally (or "
        "before the agent forwarded a signal) counts as written by a dying writer: skipped.",
        number())
    transfer_concurrency: int = setting("KELPIE_TRANSFER_CONCURRENCY", "32",
                                        "Files transferred in parallel.", number(int, minimum=1))
    part_concurrency: int = setting(
        "KELPIE_PART_CONCURRENCY", "16",
        "Parts of large files transferred in parallel (across all large files). An upload "
        "holds up to this many parts in memory (16 x 8 MiB = 128 MiB by default).",
        number(int, minimum=1))
    multipart_threshold: int = setting(
        "KELPIE_MULTIPART_THRESHOLD_MB", "16",
        "Files at least this large go up and down in parallel parts.",
        number(int, minimum=5, scale=MIB))
    multipart_chunksize: int = setting("KELPIE_MULTIPART_CHUNK_MB", "8",
                                       "Part size for multipart transfers.",
                                       number(int, minimum=5, scale=MIB))
    fast_small_transfers: bool = setting(
        "KELPIE_FAST_SMALL_TRANSFERS", "true",
        "Send small objects on a custom endpoint with the agent's own lean signed requests "
        "instead of botocore's (about 3x less CPU per object); false: botocore for all.",
        boolean)
    s3_endpoint_url: str | None = setting(
        ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"), None,
        "S3-compatible endpoint (R2, SeaweedFS, MinIO); unset: AWS S3.", url())
    s3_region: str = setting(("AWS_REGION", "AWS_DEFAULT_REGION"), "us-east-1",
                             "Region used to sign requests.")
    s3_ca_bundle: str | None = setting("AWS_CA_BUNDLE", None,
                                       "CA bundle for a TLS endpoint with a private CA.",
                                       existing_file)
    s3_addressing_style: str = setting(
        "KELPIE_S3_ADDRESSING_STYLE", "auto",
        "auto, path or virtual. auto uses path style for a custom endpoint.",
        choice("auto", "path", "virtual"))
    environ: dict = field(default_factory=dict, repr=False)


# Read by botocore's own credential chain, not by Config; listed so --help names them.
BOTOCORE_SETTINGS = [
    Setting(("AWS_ACCESS_KEY_ID",), None,
            "Credentials; AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE, "
            "AWS_SHARED_CREDENTIALS_FILE and the rest of botocore's chain work as usual."),
]

SETTINGS: list[Setting] = [item.metadata["setting"] for item in fields(Config)
                           if "setting" in item.metadata] + BOTOCORE_SETTINGS


def _get(env: dict, *names: str) -> str | None:
    for name in names:
        value = env.get(name)
        if value is not None and value != "":
            return value
    return None


def load(environ: dict | None = None) -> Config:
    env = dict(os.environ if environ is None else environ)
    values = {item.name: item.metadata["setting"].read(env) for item in fields(Config)
              if "setting" in item.metadata}
    # The rules that join settings together.
    # The organization of a Salad API key defaults to the one the node's IMDS token names.
    if (not values["kelpie_api_key"] and values["salad_api_key"]
            and not values["salad_project"]):
        raise ConfigError("SALAD_API_KEY needs SALAD_PROJECT (sent as Salad-Project)")
    for legacy in ("input_dir", "checkpoint_dir", "output_dir"):
        values[legacy] = values["work_dir"] / values[legacy]
    return Config(**values, environ=env)


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
    api_url = url(required=True)("KELPIE_API_URL", _get(env, "KELPIE_API_URL"))
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
