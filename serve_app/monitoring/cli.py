"""``accuwatt monitoring up|build|render|push-dashboards``. Thin: parse, call one function."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from serve_app.argtypes import http_url, port, require_package
from serve_app.errors import UsageError
from serve_app.monitoring.flags import host_port, scrape_interval, user_password
from serve_app.signals import sigterm_unwinds
from serve_app.topology.cli import read_record, recorded_launcher

DEFAULT_WORK_DIR = Path(__file__).resolve().parents[2] / ".cache" / "accuwatt" / "monitoring"
"""In the checkout (gitignored ``.cache/``), like ``stack.BIN_DIR``: never relative to where the
command runs, so the rendered config's paths are the same from any folder."""


def ray_temp_dir(given: str | None) -> Path:
    """The Ray temp dir whose ``session_latest`` ``up`` and ``render`` scrape: ``--ray-temp-dir``, else
    ``$RAY_TMPDIR``, else the folder of the cluster ``accuwatt cluster up`` recorded while its launcher
    runs (and ``$RAY_ADDRESS``, when set, is that cluster's), else ``/tmp/ray``. That cluster keeps its
    sessions in a ``/tmp/awc-*`` folder of its own: before, the default read ``/tmp/ray``'s latest
    session, another Ray's or one long stopped, and the config scraped nothing of the cluster."""
    if given is not None:
        return Path(given).absolute()
    if os.environ.get("RAY_TMPDIR"):
        return Path(os.environ["RAY_TMPDIR"]).absolute()
    try:
        rec = read_record()
    except UsageError:  # a state folder or record that is not ours: no recorded cluster
        rec = None
    cluster = rec.get("cluster") if rec is not None and recorded_launcher(rec) is not None else None
    if isinstance(cluster, dict) and isinstance(cluster.get("temp_dir"), str) and cluster["temp_dir"]:
        address = os.environ.get("RAY_ADDRESS")
        if not address or address == cluster.get("address"):
            print(
                f"accuwatt: the Ray of `accuwatt cluster up` ({cluster.get('address')}, sessions in "
                f"{cluster['temp_dir']}); --ray-temp-dir for another",
                file=sys.stderr,
            )
            return Path(cluster["temp_dir"])
    return Path("/tmp/ray")


def _os_message(exc: OSError, flag: str, given: str, folder: Path) -> str:
    """An OSError in one line: named by ``flag`` when it concerns ``folder``, else by its file."""
    name = Path(exc.filename).absolute() if exc.filename else None
    detail = exc.strerror or str(exc)
    if name is None or name == folder or folder in name.parents:
        return f"{flag} {given}: {detail}"
    return f"{name}: {detail}"


def cmd_up(args: argparse.Namespace) -> int:
    from serve_app.monitoring.stack import MonitoringError, Service, start_stack

    work_dir = Path(args.work_dir).absolute()
    services: list[Service] = []
    stop = threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.getsignal(sig) for sig in signals}
    # Before anything starts: a signal during startup unwinds through start_stack, which stops the
    # half-started service (Prometheus runs in a session of its own, so no signal reaches it); SIGTERM
    # then exits 143 (`sigterm_unwinds`) once the ``finally`` below has stopped what had started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with sigterm_unwinds():
        try:
            try:
                services = start_stack(
                    ray_temp_dir(args.ray_temp_dir),
                    work_dir,
                    args.port,
                    None if args.no_pushgateway else args.pushgateway_port,
                    args.scrape_interval,
                )
            except MonitoringError as exc:
                raise UsageError(str(exc)) from None
            except OSError as exc:
                raise UsageError(_os_message(exc, "--work-dir", args.work_dir, work_dir)) from None
            for sig in signals:
                signal.signal(sig, lambda *_: stop.set())
            for s in services:
                print(f"{s.name}: {s.url}  (log: {s.log_path})")
            print("Ctrl-C stops them.", flush=True)
            while not stop.wait(1.0):
                dead = [s for s in services if s.process.poll() is not None]
                if dead:
                    print(
                        f"{dead[0].name} exited ({dead[0].process.returncode}); see {dead[0].log_path}",
                        file=sys.stderr,
                    )
                    return 1
            return 0
        except KeyboardInterrupt:
            print("accuwatt: interrupted while starting; stopped what had started", file=sys.stderr)
            return 130
        finally:
            for s in reversed(services):
                s.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def cmd_render(args: argparse.Namespace) -> int:
    import yaml

    from serve_app.monitoring.stack import MonitoringError, discovery_file, render_config

    try:
        sd = discovery_file(ray_temp_dir(args.ray_temp_dir), Path(args.work_dir).absolute())
    except MonitoringError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"--work-dir {args.work_dir}: {exc.strerror or exc}") from None
    cfg = render_config(sd, args.pushgateway, args.scrape_interval)
    print(yaml.safe_dump(cfg, sort_keys=False), end="")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from serve_app.monitoring.build import stale, write

    root = Path(args.out)
    try:
        if args.check:
            bad = stale(root)
            for rel in bad:
                print(f"stale: {root / rel} (run `accuwatt monitoring build`)", file=sys.stderr)
            return 1 if bad else 0
        paths = write(root)
    except OSError as exc:
        raise UsageError(_os_message(exc, "--out", args.out, root.absolute())) from None
    for path in paths:
        print(path)
    return 0


def cmd_push_dashboards(args: argparse.Namespace) -> int:
    require_package("grafana_client", "accuwatt monitoring push-dashboards", "monitoring", "grafana-client")
    from grafana_client.client import GrafanaException

    from serve_app.monitoring.push import load_dashboards, push_dashboards

    dashboards = load_dashboards(Path(args.dashboards))
    try:
        urls = push_dashboards(
            args.grafana_url,
            args.token,
            dashboards,
            datasource_uid=args.datasource_uid,
            folder_uid=args.folder_uid,
            basic_auth=args.basic_auth,
        )
    except (GrafanaException, OSError) as exc:  # HTTP answers; transport errors (niquests: OSError)
        detail = " ".join(str(exc).split()) or type(exc).__name__
        errno = re.search(r"\[Errno -?\d+\] [^'\")]+", detail)  # the transport's root cause
        raise UsageError(f"Grafana at {args.grafana_url}: {errno.group(0) if errno else detail}") from None
    for url in urls:
        print(args.grafana_url.rstrip("/") + url if url.startswith("/") else url)
    return 0


def register(subparsers: Any) -> None:
    """Add ``accuwatt monitoring ...`` to the CLI."""
    from serve_app.monitoring.stack import MONITORING_DIR

    p = subparsers.add_parser("monitoring", help="Prometheus, Pushgateway and Grafana dashboards")
    sub = p.add_subparsers(dest="monitoring_command", required=True)

    def ray_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--ray-temp-dir",
            default=None,
            help="Ray's temp dir; its session_latest is scraped (default: $RAY_TMPDIR, else the cluster "
            "`accuwatt cluster up` runs, else /tmp/ray)",
        )
        sp.add_argument(
            "--work-dir",
            default=str(DEFAULT_WORK_DIR),
            help="rendered config, TSDB, logs and, for a Ray without its dashboard, the discovery file "
            "(default: .cache/accuwatt/monitoring in the checkout)",
        )
        sp.add_argument(
            "--scrape-interval",
            type=scrape_interval,
            default="15s",
            help="Prometheus duration, at most 15s: the rules' rates are over 1m (default: 15s)",
        )

    sp = sub.add_parser("up", help="start Prometheus (and a Pushgateway) on loopback against the local Ray")
    ray_args(sp)
    sp.add_argument("--port", type=port, default=9090, help="Prometheus port on 127.0.0.1 (default: 9090)")
    sp.add_argument("--pushgateway-port", type=port, default=9091, help="Pushgateway port (default: 9091)")
    sp.add_argument("--no-pushgateway", action="store_true", help="do not start a Pushgateway")
    sp.set_defaults(func=cmd_up)

    sp = sub.add_parser(
        "render",
        help="print the Prometheus config for the local Ray (for your own Prometheus); when Ray wrote "
        "no discovery file (no dashboard), writes one into --work-dir for the config to point at",
    )
    ray_args(sp)
    sp.add_argument(
        "--pushgateway",
        type=host_port,
        default="127.0.0.1:9091",
        metavar="HOST:PORT",
        help="the Pushgateway (default: 127.0.0.1:9091)",
    )
    sp.set_defaults(func=cmd_render)

    sp = sub.add_parser("build", help="regenerate rule files and dashboard JSON under monitoring/")
    sp.add_argument("--out", default=str(MONITORING_DIR), help="the monitoring/ folder")
    sp.add_argument("--check", action="store_true", help="only report files that differ (exit 1)")
    sp.set_defaults(func=cmd_build)

    sp = sub.add_parser("push-dashboards", help="create or overwrite the dashboards in a Grafana")
    sp.add_argument("--grafana-url", type=http_url, required=True, help="e.g. http://127.0.0.1:3000")
    sp.add_argument("--token", default=None, help="a Grafana service-account token (Editor)")
    sp.add_argument(
        "--basic-auth", type=user_password, default=None, metavar="USER:PASSWORD", help="instead of --token"
    )
    sp.add_argument(
        "--datasource-uid",
        default=None,
        help="uid of your Prometheus datasource (default: accuwatt-prometheus, the provisioned one)",
    )
    sp.add_argument("--folder-uid", default=None, help="Grafana folder uid (default: General)")
    sp.add_argument("--dashboards", default=str(MONITORING_DIR / "grafana" / "dashboards"))
    sp.set_defaults(func=cmd_push_dashboards)
