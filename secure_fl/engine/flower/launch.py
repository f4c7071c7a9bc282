"""Starting Flower's processes for a kit, and building the Flower App of one run.

Everything a deployment sets is here, in one place:

* SuperLink (aggregator): TLS with the kit's CA/certificate/key, ``--enable-supernode-auth``,
  ``--disable-runtime-dependency-installation`` (offline; secure-fl is installed, not shipped),
  its own ``FLWR_HOME`` in the kit, telemetry and update checks off. After it listens, every
  provisioned site's SuperNode key is registered under the site's name
  (``flwr supernode register KEY CONN --name SITE``), so ``NodeInfo.name`` identifies sites.
* SuperNode (site): the kit's CA and authentication key, node config ``kit=... site=...``,
  ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL=0.1`` (a ClientApp starts ~1 s sooner per stage).
* ``flwr run``: a FAB with only ``pyproject.toml`` and a two-line module naming
  :data:`~.apps.server_app` / :data:`~.apps.client_app`; the run's experiment and protocol
  specs travel in its config (``[tool.flwr.app.config] cfg``, JSON).

``insecure`` (no TLS, no node authentication) is accepted only when the address is a loopback
address, and warns.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...deploy.kit import Kit, KitError

__all__ = [
    "flwr_env", "split_address", "check_insecure", "write_flwr_config", "start_superlink", "register_sites",
    "start_supernode", "check_server_certificate", "build_app", "read_app_config", "wait_for_port", "bin_path",
]

CONNECTION = "secure-fl"
SUPERNODE_UNREGISTERED_EXIT = 305


def bin_path(name: str) -> str:
    """A Flower executable next to this Python (the venv secure-fl runs in), else from PATH."""
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


def flwr_env(kit: Kit, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    home = kit.state_dir / "flwr_home"
    home.mkdir(mode=0o700, exist_ok=True)
    # Flower's processes start further Flower executables (flower-superexec, flwr-clientapp) by name
    bindir = str(Path(sys.executable).parent)
    if bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.update({"FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                "COLUMNS": "200", "NO_COLOR": "1"})
    env.update(extra or {})
    return env


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_insecure(address: str, what: str) -> None:
    host, _ = split_address(address)
    if not _is_loopback(host):
        raise KitError(f"{what}: --insecure is allowed only on a loopback address (127.0.0.1, ::1, localhost), "
                       f"not {host!r}: "
                       "between machines, TLS and node authentication are required")
    print(f"WARNING: {what} runs WITHOUT TLS and without node authentication (--insecure, loopback only): "
          "any local process can join as a site", file=sys.stderr, flush=True)


def write_flwr_config(kit: Kit, address: str, insecure: bool) -> Path:
    """``$FLWR_HOME/config.toml`` with one explicit connection (1.40's default one simulates)."""
    home = kit.state_dir / "flwr_home"
    home.mkdir(mode=0o700, exist_ok=True)
    lines = ["[superlink]", f'default = "{CONNECTION}"', "", f'[superlink.{CONNECTION}]', f'address = "{address}"']
    lines.append("insecure = true" if insecure else f"root-certificates = {json.dumps(str(kit.ca_cert))}")
    path = home / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (for SuperLinks and SuperNodes started side by side on one machine)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_process_group(proc: subprocess.Popen[Any]) -> None:
    """Stop a process group we started: SIGTERM, then SIGKILL after 8 s (a SuperNode needs > 3 s to exit)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=8)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise KitError(f"the process exited with code {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.2)
    raise KitError(f"nothing listens on {host}:{port} after {timeout:g} s")


def start_superlink(kit: Kit, *, insecure: bool = False, bind: str | None = None, database: bool = True,
                    log: Path | None = None, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    host, port = split_address(kit.address)
    if insecure:
        check_insecure(kit.address, "the aggregator")
    cmd = [bin_path("flower-superlink"), "--host", bind or host, "--port", str(port),
           "--disable-runtime-dependency-installation"]
    if insecure:
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(kit.ca_cert), "--ssl-certfile", str(kit.file("tls/server.pem")),
                "--ssl-keyfile", str(kit.file("tls/server.key")), "--enable-supernode-auth"]
    if database:
        cmd += ["--database", str(kit.state_dir / "superlink.db")]
    write_flwr_config(kit, kit.address, insecure)
    out = open(log, "ab") if log else None  # noqa: SIM115 (owned by the process)
    return subprocess.Popen(cmd, env=flwr_env(kit, env), stdout=out or None, stderr=subprocess.STDOUT if out else None,
                            start_new_session=True)


def register_sites(kit: Kit, env: Mapping[str, str] | None = None, only: list[str] | None = None) -> dict[str, str]:
    """Register every provisioned site's (or the ``only`` ones') SuperNode key under its name;
    returns site -> node id or note."""
    out: dict[str, str] = {}
    for site in sorted(only if only is not None else kit.sites):
        cmd = [bin_path("flwr"), "supernode", "register", str(kit.file(f"nodes/{site}.pub")), CONNECTION,
               "--name", site, "--format", "json"]
        res = subprocess.run(cmd, env=flwr_env(kit, env), capture_output=True, text=True, timeout=120)
        text = (res.stdout + res.stderr).strip()
        try:
            data = json.loads(res.stdout)
        except json.JSONDecodeError:
            data = {}
        if data.get("success"):
            out[site] = str(data.get("node-id"))
        elif "already in use" in text:
            out[site] = "already registered"
        else:
            raise KitError(f"registering site {site!r} with the SuperLink failed: {text[-400:]}")
    return out


def check_server_certificate(kit: Kit, timeout: float = 10.0) -> None:
    """Before starting a SuperNode: does the aggregator present a certificate of this kit's CA?"""
    host, port = split_address(kit.address)
    ctx = ssl.create_default_context(cafile=str(kit.ca_cert))
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=host):
                return
    except ssl.SSLCertVerificationError as exc:
        raise KitError(
            f"the aggregator at {kit.address} presents a TLS certificate that federation {kit.federation!r}'s CA "
            f"({kit.ca_cert}) did not sign ({exc.verify_message}): a wrong certificate, or this kit is from another "
            "federation; refusing to connect"
        ) from None
    except OSError as exc:
        raise KitError(f"cannot reach the aggregator at {kit.address}: {exc}") from None


def start_supernode(kit: Kit, runtime_port: int, *, insecure: bool = False, log: Path | None = None,
                    env: Mapping[str, str] | None = None, pipe: bool = False) -> subprocess.Popen[bytes]:
    """Start the site's SuperNode; output to ``log``, to a pipe (``pipe``) or inherited."""
    node_config = f'kit={json.dumps(str(kit.path))} site={json.dumps(kit.name)}'
    cmd = [bin_path("flower-supernode"), "--superlink", kit.address, "--port", str(runtime_port),
           "--node-config", node_config]
    if insecure:
        check_insecure(kit.address, f"site {kit.name!r}")
        cmd.append("--insecure")
    else:
        cmd += ["--root-certificates", str(kit.ca_cert), "--auth-supernode-private-key", str(kit.file("node/auth.key"))]
    extra = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1", **(env or {})}
    out: Any = open(log, "ab") if log else (subprocess.PIPE if pipe else None)  # noqa: SIM115
    return subprocess.Popen(cmd, env=flwr_env(kit, extra), stdout=out, stderr=subprocess.STDOUT if out else None,
                            start_new_session=True)


_ENTRY = '"""Flower App of one secure-fl run: the apps live in the installed secure-fl package."""\n' \
         "from secure_fl.engine.flower import apps as _apps\n\n" \
         "server_app = _apps.server_app\n" \
         "client_app = _apps.client_app\n"


def build_app(app_dir: Path, cfg: Mapping[str, Any]) -> Path:
    """Write the FAB source of one run: pyproject.toml (with ``cfg`` as JSON) and the entry module."""
    app_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (app_dir / "securefl_app").mkdir(exist_ok=True)
    (app_dir / "securefl_app" / "__init__.py").write_text("")
    (app_dir / "securefl_app" / "entry.py").write_text(_ENTRY)
    text = f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "securefl-run"
version = "1.0.0"
description = "one secure-fl run (stage messages only)"
dependencies = ["secure-fl", "flwr==1.40.*"]

[tool.hatch.build.targets.wheel]
packages = ["securefl_app"]

[tool.flwr.app]
publisher = "secure-fl"

[tool.flwr.app.components]
serverapp = "securefl_app.entry:server_app"
clientapp = "securefl_app.entry:client_app"

[tool.flwr.app.config]
cfg = {json.dumps(json.dumps(dict(cfg), sort_keys=True))}
"""
    (app_dir / "pyproject.toml").write_text(text)
    return app_dir


def read_app_config(run_config: Mapping[str, Any]) -> dict[str, Any]:
    try:
        cfg: dict[str, Any] = json.loads(str(run_config["cfg"]))
    except (KeyError, json.JSONDecodeError) as exc:
        raise KitError(f"the Flower App's run config has no valid 'cfg' ({exc}); "
                       "build it with `secure-fl deploy run`") from exc
    return cfg
