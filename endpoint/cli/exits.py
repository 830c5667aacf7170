"""Exit codes of `compute-endpoint`: the official endpoint's (features.md §1.4), so scripts
keep working, and the one mapping from our exception tree to them."""

from __future__ import annotations

from endpoint.errors import (
    AlreadyRunning,
    AuthError,
    ConfigError,
    EndpointError,
    EndpointOnline,
    PermissionDenied,
    ServiceError,
    ServiceUnreachable,
    StopFailed,
)
from endpoint.host.dirs import USER_DIR_ENV

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 2
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78
EX_INTERRUPTED = 130
EX_STOP_FAILED = 255

EXIT_CODES = f"""\
exit codes:
  {EX_OK:<4} success
  {EX_FAILURE:<4} error: not configured, already configured, refused without --force, ...
  {EX_USAGE:<4} bad command line
  {EX_DATAERR:<4} the service rejected the registration as invalid (HTTP 400/422)
  {EX_UNAVAILABLE:<4} the service refused the endpoint: deleted, or locked by `stop --remote`
       (HTTP 404/409/423)
  {EX_SOFTWARE:<4} the service answered something unexpected
  {EX_CANTCREAT:<4} the endpoint is already running (its pid file lock is held)
  {EX_TEMPFAIL:<4} the service could not be reached; try again later
  {EX_NOPERM:<4} not logged in, login refused (HTTP 401/403), or permission denied
  {EX_CONFIG:<4} invalid configuration (check-config), or endpoint_setup exited non-zero
  {EX_INTERRUPTED:<4} interrupted (Ctrl-C, or stopped while still starting)
  {EX_STOP_FAILED:<4} stop could not end the process; delete refused: endpoint online

environment:
  {USER_DIR_ENV}   the config dir (default ~/.globus_compute; -c wins)
  GLOBUS_COMPUTE_ENDPOINT_DIR   the endpoint dir used when no NAME is given; in a user
       endpoint of a core endpoint, its dir unless paths.endpoint_dir says otherwise
  GLOBUS_COMPUTE_LOG_PATH   the log file unless paths.endpoint_log says otherwise
  GLOBUS_COMPUTE_CLIENT_ID, GLOBUS_COMPUTE_CLIENT_SECRET   log in as a client, not a user
       (FUNCX_SDK_CLIENT_ID/_SECRET: deprecated names, still accepted)
  a running endpoint sets GLOBUS_COMPUTE_ENDPOINT_NAME, _ENDPOINT_DIR and _LOG_PATH for
  endpoint_setup and its workers
"""

#: Checked in order: the first class that matches decides the exit code.
_EXIT_BY_ERROR: list[tuple[type[EndpointError], int]] = [
    (ConfigError, EX_CONFIG),
    (AlreadyRunning, EX_CANTCREAT),
    (EndpointOnline, EX_STOP_FAILED),
    (StopFailed, EX_STOP_FAILED),
    (AuthError, EX_NOPERM),
    (PermissionDenied, EX_NOPERM),
    (ServiceUnreachable, EX_TEMPFAIL),
]


def exit_code(err: EndpointError) -> int:
    for cls, code in _EXIT_BY_ERROR:
        if isinstance(err, cls):
            return code
    if isinstance(err, ServiceError):
        return _service_exit_code(err)
    return EX_FAILURE


def _service_exit_code(err: ServiceError) -> int:
    if err.http_status in (404, 409, 423):
        return EX_UNAVAILABLE
    if err.http_status in (400, 422):
        return EX_DATAERR
    if err.http_status in (401, 403):
        return EX_NOPERM
    return EX_SOFTWARE
