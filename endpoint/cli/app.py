"""`compute-endpoint` (alias `globus-compute-endpoint`): the only module that prints or exits.

Commands are thin: each calls one library function and reports its result. Exit codes follow
the official endpoint's (features.md §1.4) so scripts keep working; the table is in `--help`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from endpoint import __version__
from endpoint.admin import auth, boot, configure, policies, start, stop
from endpoint.admin import delete as deletion
from endpoint.admin.listing import list_endpoints
from endpoint.admin.service import ENDPOINT_PROTOCOL_VERSION
from endpoint.cli import completion, legacy_env, policy
from endpoint.cli.exits import (
    EX_CONFIG,
    EX_FAILURE,
    EX_INTERRUPTED,
    EX_OK,
    EX_USAGE,
    EXIT_CODES,
    exit_code,
)
from endpoint.config import check, describe, overrides
from endpoint.errors import (
    ConfigError,
    EndpointError,
    SetupFailed,
)
from endpoint.host import logs, status
from endpoint.host.dirs import USER_DIR_ENV, find_by_id, is_uuid, resolve, user_dir


def _err(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- the terminal side of login and start ----------------------------------------------------


def _show_url(url: str) -> None:
    line = "-" * 40
    print(f"\nPlease authenticate here:\n{line}\n{url}\n{line}\n", flush=True)


def _ask_code() -> str:
    return input("Enter the resulting Authorization Code here: ")


PROMPT = auth.LoginPrompt(_show_url, _ask_code)


class _Terminal:
    """register.Notifier: what `start` says while it starts."""

    def cleaned_stale(self, ep_dir: Path, pid: int | None) -> None:
        _err(
            f"> Endpoint <{ep_dir.name}> had not shut down cleanly (pid {pid}); "
            "cleaned up its stale pid file"
        )

    def registered(self, name: str, endpoint_id: str) -> None:
        print(f"Starting endpoint <{name}>; registered ID: {endpoint_id}", flush=True)

    def login_prompt(self) -> auth.LoginPrompt | None:
        return PROMPT


# ---- commands ---------------------------------------------------------------------------------


def cmd_version(_args: argparse.Namespace) -> int:
    # The first line is the official format, with the official release whose behaviour and
    # protocol this one implements, for scripts that parse it; the second says what runs.
    print(f"Globus Compute endpoint version: {ENDPOINT_PROTOCOL_VERSION}")
    print(f"container-compute-endpoint {__version__}")
    return EX_OK


def _configure_options(args: argparse.Namespace) -> configure.Options:
    policy.check(policy.from_args(args))
    core_file = args.core_config
    if args.manager_config is not None:
        if core_file is not None:
            _err(
                "Warning: both --manager-config and --core-config given; --manager-config "
                "(deprecated) is ignored"
            )
        else:
            _err("Warning: --manager-config is deprecated; use --core-config")
            core_file = args.manager_config
    files = overrides.read_all(
        core_file,
        args.template_config,
        args.schema_config,
        args.user_env_config,
        args.id_mapping_config,
    )
    opts = configure.Options(
        multi_user=args.multi_user,
        display_name=args.display_name,
        auth_policy=args.auth_policy,
        subscription_id=args.subscription_id,
        contact_email=args.contact_email,
        files=files,
    )
    configure.check_options(opts)
    if args.contact_email and not opts.core:
        _err("Warning: --contact-email is only used by core (multi-user) endpoints; ignored")
    return opts


def cmd_configure(args: argparse.Namespace) -> int:
    opts, doc = _configure_options(args), policy.document(policy.from_args(args))
    created, policy_id = policies.configure_with_policy(args.name, opts, doc, PROMPT)
    if policy_id is not None:
        print(f"Created authentication policy {policy_id}")
    print(f"Created profile for endpoint named <{args.name}>\n")
    print(f"\tConfiguration file: {created.config}")
    for path in created.files[1:]:
        print(f"\t{path}")
    print(f"\nUse `compute-endpoint start {args.name}` to start the endpoint.")
    return EX_OK


def cmd_start(args: argparse.Namespace) -> int:
    started = start.start(
        args.name,
        notify=_Terminal(),
        endpoint_uuid=args.endpoint_uuid,
        detach=args.detach,
        debug=args.debug,
    )
    if started.daemon_pid is not None:
        print(
            f"> Endpoint started in the background (pid {started.daemon_pid}); "
            f"log: {started.log_path}"
        )
    return EX_OK


def cmd_stop(args: argparse.Namespace) -> int:
    out = stop.stop(args.name, grace_s=args.timeout, remote=args.remote, prompt=PROMPT)
    if out.locked_remotely:
        print(
            f"> Endpoint <{out.name}> ({out.locked_remotely}) is locked at the service: "
            "every instance of it is refused registration for a while"
        )
    if out.cleaned_stale:
        print(f"> Endpoint <{out.name}> had not shut down cleanly; removed its stale pid file")
    elif out.report is None:
        print(f"> Endpoint <{out.name}> is not running.")
    else:
        if not out.report.graceful:
            _err(f"Warning: endpoint <{out.name}> ignored SIGTERM for {args.timeout}s; killed")
        elif out.report.pid in out.report.killed:
            _err(f"Warning: endpoint <{out.name}> hung while exiting; killed")
        leftovers = [p for p in out.report.killed if p != out.report.pid]
        if leftovers:
            _err(f"Warning: killed leftover endpoint processes {leftovers}")
        print(f"> Endpoint <{out.name}> is now stopped")
    return EX_OK


def cmd_restart(args: argparse.Namespace) -> int:
    args.remote = False
    cmd_stop(args)
    return cmd_start(args)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The texttable look of the official `list` (seeds): centred headers, ruled rows."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [rule, "|" + "|".join(f" {h.center(w)} " for h, w in zip(headers, widths, strict=True))]
    out[-1] += "|"
    out.append(rule.replace("-", "="))
    for row in rows:
        cells = (f" {c.ljust(w)} " for c, w in zip(row, widths, strict=True))
        out += ["|" + "|".join(cells) + "|", rule]
    return "\n".join(out)


def cmd_list(args: argparse.Namespace) -> int:
    rows = list_endpoints()
    if args.format == "json":
        doc = [
            {"endpoint_id": r.endpoint_id, "status": r.state.value, "name": r.name} for r in rows
        ]
        print(json.dumps(doc, indent=2))
        return EX_OK
    if not rows:
        print("No endpoints configured!\n\n (Hint: compute-endpoint configure)")
        return EX_OK
    cells = [(str(r.endpoint_id), r.state.value, r.name) for r in rows]
    print(_table(("Endpoint ID", "Status", "Endpoint Name"), cells))
    return EX_OK


def _confirm(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


def cmd_delete(args: argparse.Namespace) -> int:
    target = deletion.target_of(args.name)
    if not args.yes:
        what = f"<{target.label}> ({target.endpoint_id or 'never registered'})"
        if not _confirm(f"Delete endpoint {what}? This cannot be undone. [y/N] "):
            _err("Aborted: nothing deleted")
            return EX_FAILURE
    out = deletion.delete(args.name, force=args.force, prompt=PROMPT)
    for warning in out.warnings:
        _err(f"Warning: {warning}")
    if out.stopped:
        print(f"> Stopped the running endpoint <{target.label}>")
    if out.removed_unit:
        print(f"> Removed its systemd unit {out.removed_unit}")
    where = [
        w
        for w, done in (("the service", out.remote_deleted), ("this machine", out.removed_dir))
        if done
    ]
    print(f"> Endpoint <{target.label}> deleted from {' and '.join(where) or 'nowhere'}")
    return EX_OK


def cmd_enable_on_boot(args: argparse.Namespace) -> int:
    ep_dir = resolve(args.name)
    # The unit starts without a terminal: make sure credentials are already stored.
    auth.login(force=False, prompt=PROMPT)
    done = boot.enable(ep_dir.name, ep_dir, user_dir())
    print(f"> Systemd unit written: {done.unit_path}")
    if done.enabled:
        print(f"> Enabled; start it now with: systemctl start {done.unit_path.name}")
    else:
        print("Enable it and start the endpoint with:")
        print(f"  sudo systemctl enable --now {done.unit_path.name}")
    return EX_OK


def cmd_disable_on_boot(args: argparse.Namespace) -> int:
    ep_dir = resolve(args.name)
    done = boot.disable(ep_dir.name, ep_dir)
    if done.systemctl:
        print(f"> Stopped and disabled {done.unit_path.name}")
    if done.removed:
        print(f"> Removed {done.unit_path}")
    else:
        print(f"> No systemd unit for <{ep_dir.name}> at {done.unit_path}")
    return EX_OK


def cmd_login(args: argparse.Namespace) -> int:
    if auth.login(args.force, PROMPT):
        print("> Logged in" + (" (client credentials)" if auth.is_client_login() else ""))
    else:
        print("> Already logged in (use --force to log in again)")
    return EX_OK


def cmd_logout(args: argparse.Namespace) -> int:
    out = auth.logout(args.force)
    if not out.revoked:
        _err("Warning: the service could not revoke the tokens; they were removed locally")
    print(f"> Logged out{f' (removed {out.removed})' if out.removed else ''}")
    return EX_OK


def cmd_whoami(args: argparse.Namespace) -> int:
    info = auth.whoami()
    print(info.get("preferred_username") or info.get("username") or info.get("sub"))
    if args.linked_identities:
        for ident in info.get("identity_set") or []:
            print(f"  {ident.get('username')} ({ident.get('sub')})")
    return EX_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    target = args.target
    found = find_by_id(target) if is_uuid(target) else None
    # The models check every option; no engine, provider or address is built, so a file
    # written for a cluster's network interfaces and batch system checks anywhere.
    cfg, path = check(str(found) if found else target)
    print(describe(cfg), end="")
    _err(f"> {path}: valid")
    return EX_OK


def cmd_completion(args: argparse.Namespace) -> int:
    print(completion.script(args.shell, build_parser()), end="")
    return EX_OK


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 only for a live process with connected AMQP sessions and a fresh heartbeat."""
    verdict = status.health_of(resolve(args.name), slack_s=args.slack)
    if verdict.healthy:
        print(verdict.reason)
        return EX_OK
    _err(f"unhealthy: {verdict.reason}")
    return EX_FAILURE


def cmd_status(args: argparse.Namespace) -> int:
    ep_dir = resolve(args.name)
    doc = status.read_status(ep_dir)
    if doc is None:
        _err(f"Error: no {ep_dir / status.STATUS_FILE}: endpoint <{ep_dir.name}> has not run yet")
        return EX_FAILURE
    verdict = status.judge(doc, alive=status.writer_alive(ep_dir, doc.get("pid")))
    if args.format == "json":
        print(json.dumps({**doc, "healthy": verdict.healthy, "reason": verdict.reason}, indent=2))
        return EX_OK
    sessions = ", ".join(
        f"{name} {'up' if up else 'down'}"
        for name, up in sorted((doc.get("amqp_sessions") or {}).items())
    )
    print(f"endpoint:   {ep_dir.name} ({doc.get('endpoint_id')}), pid {doc.get('pid')}")
    print(f"state:      {doc.get('state')}; {'healthy' if verdict.healthy else 'unhealthy'}")
    print(f"            {verdict.reason}")
    print(f"amqp:       {sessions}")
    ix = doc.get("interchange") or {}
    print(
        f"tasks:      {ix.get('queued_tasks', 0)} queued, {ix.get('running_tasks', 0)} running, "
        f"{ix.get('unconfirmed_results', 0)} results unconfirmed"
    )
    return EX_OK


def cmd_diagnose(args: argparse.Namespace) -> int:
    from endpoint.admin import diagnose  # the bundle's readers: only for this command

    bundle = diagnose.diagnose(args.name, args.output)
    print(bundle.summary, end="")
    print(f"> wrote {bundle.path}")
    return EX_OK


def _add_health(sub: Any) -> None:
    h = _add(sub, "health", cmd_health, "exit 0 if the endpoint is alive, connected and beating")
    _endpoint_arg(h, "endpoint name or id (default: default)")
    h.add_argument(
        "--slack",
        type=float,
        default=status.FRESHNESS_SLACK_S,
        metavar="SECONDS",
        help="seconds allowed beyond two heartbeat periods "
        f"(default {status.FRESHNESS_SLACK_S:.0f})",
    )
    st = _add(sub, "status", cmd_status, "show what the running endpoint reports (status.json)")
    _endpoint_arg(st, "endpoint name or id (default: default)")
    st.add_argument("--format", choices=("text", "json"), default="text")
    dg = _add(sub, "diagnose", cmd_diagnose, "write a .tar.gz for a support request (redacted)")
    _endpoint_arg(dg, "endpoint name or id (default: default)")
    dg.add_argument(
        "--output",
        type=Path,
        metavar="PATH",
        help="the archive (default: ./compute-endpoint-"
        "diagnose-NAME-TIMESTAMP.tar.gz; never overwritten)",
    )


# ---- the parser -------------------------------------------------------------------------------


def _uuid(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {text!r}")


def _common() -> argparse.ArgumentParser:
    # SUPPRESS: `--debug` after the command must not reset one given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="debug logs"
    )
    # Accepted so that the official commands' scripts run unchanged: ours never colours its
    # log lines, and mirrors them to the console whenever it runs in the foreground.
    for flag in ("--no-color", "--log-to-console"):
        common.add_argument(
            flag,
            action="store_true",
            default=argparse.SUPPRESS,
            help="(accepted for compatibility; always the case here)",
        )
    return common


Command = Callable[[argparse.Namespace], int]


def _endpoint_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("name", nargs="?", default=None, metavar="NAME_OR_UUID", help=what)


def _add(sub: Any, name: str, func: Command, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text, parents=[_common()]
    )
    p.set_defaults(func=func)
    return p


def _add_lifecycle(sub: Any) -> None:
    _add_configure(sub)
    for name, func, help_text in (
        ("start", cmd_start, "register and run an endpoint (foreground unless --detach)"),
        ("restart", cmd_restart, "stop, then start again"),
    ):
        s = _add(sub, name, func, help_text)
        _endpoint_arg(s, "endpoint name or id (default: default)")
        s.add_argument("--endpoint-uuid", type=_uuid, metavar="UUID", help="register as this id")
        s.add_argument("--detach", action="store_true", help="run in the background")
        if name == "restart":
            _stop_timeout(s)
    t = _add(sub, "stop", cmd_stop, "stop an endpoint: SIGTERM, then SIGKILL after a grace period")
    _endpoint_arg(t, "endpoint name or id (default: default)")
    t.add_argument("--remote", action="store_true", help="also lock it at the service")
    _stop_timeout(t)
    ls = _add(sub, "list", cmd_list, "list configured endpoints and their states")
    ls.add_argument("--format", choices=("table", "json"), default="table")
    d = _add(sub, "delete", cmd_delete, "delete an endpoint here and at the service")
    _endpoint_arg(d, "endpoint name or id (a remote-only id is fine)")
    d.add_argument("--force", action="store_true", help="stop it first; carry on past errors")
    d.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")


def _add_configure(sub: Any) -> None:
    c = _add(sub, "configure", cmd_configure, "create an endpoint directory and its config")
    c.add_argument("name", nargs="?", default="default", metavar="NAME")
    c.add_argument(
        "--multi-user",
        default=None,
        type=_bool,
        metavar="BOOL",
        help="true: a core (multi-user) endpoint: config.yaml plus a user config template, "
        "schema and environment; false: a single-user endpoint (the default, unless "
        "--core-config has no engine: block)",
    )
    c.add_argument("--display-name", metavar="TEXT", help="the name the web UI shows")
    c.add_argument("--contact-email", metavar="EMAIL", help="(core endpoints: required)")
    c.add_argument("--subscription-id", type=_uuid, metavar="UUID")
    c.add_argument(
        "--high-assurance", action="store_true", help="not supported here (refused with why)"
    )
    files = c.add_argument_group(
        "configuration file overrides", "copy FILE into the new endpoint instead of a default"
    )
    for flag, what in (
        ("--core-config", "config.yaml (the core or single-user endpoint's own config)"),
        ("--manager-config", "deprecated spelling of --core-config"),
        ("--template-config", "user_config_template.yaml.j2 (core endpoints)"),
        ("--schema-config", "user_config_schema.json (core endpoints)"),
        ("--user-env-config", "user_environment.yaml (core endpoints)"),
        ("--id-mapping-config", "identity_mapping_config.json (core endpoints)"),
    ):
        files.add_argument(flag, type=Path, metavar="FILE", help=what)
    policy.add_arguments(c)


def _stop_timeout(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--timeout",
        type=float,
        default=stop.STOP_GRACE_S,
        metavar="SECONDS",
        help=f"grace period before SIGKILL (default {stop.STOP_GRACE_S:.0f})",
    )


def _add_other(sub: Any) -> None:
    for name, func, help_text in (
        ("enable-on-boot", cmd_enable_on_boot, "install a systemd unit that starts it at boot"),
        ("disable-on-boot", cmd_disable_on_boot, "stop, disable and remove that systemd unit"),
    ):
        _endpoint_arg(_add(sub, name, func, help_text), "endpoint name or id")
    lg = _add(sub, "login", cmd_login, "log in (user flow, or client credentials from env)")
    lg.add_argument("--force", action="store_true", help="log in even if already logged in")
    lo = _add(sub, "logout", cmd_logout, "revoke and remove the stored tokens")
    lo.add_argument("--force", action="store_true", help="even while endpoints run")
    w = _add(sub, "whoami", cmd_whoami, "show the identity of the current login")
    w.add_argument("--linked-identities", action="store_true", help="list linked identities")
    cc = _add(sub, "check-config", cmd_check_config, "validate a config without starting it")
    cc.add_argument("target", metavar="NAME|PATH", help="endpoint name, directory or file")
    _add(sub, "version", cmd_version, "print the version")
    comp = _add(sub, "completion", cmd_completion, "print a shell completion script")
    comp.add_argument("shell", choices=sorted(completion.SHELLS))


# ---- core endpoints: render-user-config, and the hidden user endpoint entry point -------------


_RENDER_FILES = ("template", "user_options", "user_schema", "parent_config", "user_runtime")


def _read_render_inputs(args: argparse.Namespace) -> dict[str, str | None]:
    """Each file option's text; `-` is stdin, for at most one of them."""
    names = (*_RENDER_FILES, "mapped_identity")
    from_stdin = [n for n in names if getattr(args, n) == "-"]
    if len(from_stdin) > 1:
        raise ConfigError(f"only one option may read stdin (-), not {', '.join(from_stdin)}")
    texts: dict[str, str | None] = {}
    for name in names:
        value = getattr(args, name)
        if value is None:
            texts[name] = None
        elif value == "-":
            texts[name] = sys.stdin.read()
        else:
            try:
                texts[name] = Path(value).read_text()
            except OSError as e:
                raise ConfigError(f"cannot read {value}: {e.strerror}") from e
    return texts


def cmd_render_user_config(args: argparse.Namespace) -> int:
    from endpoint.manager import templating  # Jinja2 and jsonschema: only for this command

    texts = _read_render_inputs(args)
    manager_dir, manager_cfg = None, None
    if args.endpoint:
        manager_dir = resolve(args.endpoint)
        cfg, _ = check(str(manager_dir))
        manager_cfg = cfg.model_dump(mode="json")
    template_path = Path(args.template) if args.template not in (None, "-") else None
    inputs = templating.DebugInputs(template_path=template_path, **texts)
    print(templating.render_debug(inputs, manager_dir, manager_cfg), end="")
    return EX_OK


def cmd_start_user_endpoint(args: argparse.Namespace) -> int:
    from endpoint.runtime import managed as user_endpoint

    if sys.stdin.isatty():
        _err("Error: this command is started by a core endpoint, with its launch document")
        return EX_USAGE
    return user_endpoint.serve(0, args.status_fd)


def _add_manager_tools(sub: Any) -> None:
    r = _add(
        sub,
        "render-user-config",
        cmd_render_user_config,
        "render a core endpoint's user endpoint template as a start command would (for debugging)",
    )
    r.add_argument("-e", "--endpoint", metavar="NAME_OR_UUID", help="a core endpoint")
    r.add_argument("-t", "--template", metavar="FILE", help="a template (default: -e's)")
    r.add_argument("-o", "--user-options", metavar="FILE", help="user_endpoint_config (JSON)")
    r.add_argument("-s", "--user-schema", metavar="FILE", help="a JSON schema (default: -e's)")
    r.add_argument("--parent-config", metavar="FILE", help="_GC.parent_config (YAML)")
    r.add_argument("--user-runtime", metavar="FILE", help="_GC.user_runtime (JSON)")
    r.add_argument("--mapped-identity", metavar="FILE", help="_GC.mapped_identity (JSON)")
    # Hidden (no help): what a core endpoint runs; reads its launch document on stdin.
    h = sub.add_parser("_start-user-endpoint", parents=[_common()])
    h.add_argument("name", nargs="?", metavar="NAME")
    h.add_argument("--status-fd", type=int, default=None)
    h.set_defaults(func=cmd_start_user_endpoint)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="compute-endpoint",
        description="Run and manage Globus Compute endpoints.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common()],
    )
    p.add_argument(
        "-c", "--config-dir", metavar="DIR", help=f"the config dir (sets ${USER_DIR_ENV})"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_lifecycle(sub)
    _add_other(sub)
    _add_health(sub)
    _add_manager_tools(sub)
    return p


def _use_config_dir(path: str) -> None:
    directory = Path(path).expanduser().absolute()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ[USER_DIR_ENV] = str(directory)


_BOOL_WORDS = {"true", "false", "yes", "no", "1", "0", "on", "off"}


def _normalize_argv(argv: Sequence[str]) -> list[str]:
    """`--multi-user NAME` means `--multi-user true NAME` (the official form is `--multi-user
    BOOL`; a bare flag before the name must not swallow the name)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--multi-user" and (i + 1 == len(out) or out[i + 1].lower() not in _BOOL_WORDS):
            out.insert(i + 1, "true")
            break
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(_normalize_argv(sys.argv[1:] if argv is None else argv))
    args.debug = getattr(args, "debug", False)
    if args.config_dir:
        _use_config_dir(args.config_dir)
    logs.configure(debug=args.debug, console_level=None if args.debug else logging.WARNING)
    for warning in legacy_env.adopt(os.environ):
        _err(f"Warning: {warning}")
    func: Command = args.func
    try:
        return func(args)
    except SetupFailed as e:
        _err(f"Error: {e}; its output:\n{e.output.rstrip()}")
        return EX_CONFIG
    except EndpointError as e:
        _err(f"Error: {e}")
        return exit_code(e)
    except KeyboardInterrupt:
        _err("Interrupted")
        return EX_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
