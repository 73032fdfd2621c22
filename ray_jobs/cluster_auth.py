"""The cluster's secrets: the Ray token and the MLflow login, kept on the shared disk, never in git.

    python -m ray_jobs.cluster_auth init DIR --auth-db URI   # head, every start: create what is missing
    python -m ray_jobs.cluster_auth env DIR [--server]       # print `export ...` lines for a shell

Why a module and not a few lines of shell in ``cluster.yaml``: the tests create the same files
with the same code and start a real Ray head and MLflow server on them, so what the cluster runs
is what is tested, and the file names and the ini layout are written down once, here.

``init`` creates ``DIR`` (mode 700) and, in it, each file that is missing (mode 600, random
contents from :mod:`secrets`); a file that exists is kept as it is, because the MLflow auth
database already holds the admin password of the first start and the Ray workers already run
with the first token. A folder or file that others could read is refused, naming it and its mode:
the token is the key to running code on the cluster.

- :data:`RAY_TOKEN` read by every Ray process through ``RAY_AUTH_TOKEN_PATH`` (``RAY_AUTH_MODE=token``);
- :data:`MLFLOW_INI` ``MLFLOW_AUTH_CONFIG_PATH`` of ``mlflow server --app-name basic-auth``: the
  admin user, its password, the auth database, the permission of users on what others created;
- :data:`FLASK_KEY` ``MLFLOW_FLASK_SERVER_SECRET_KEY``, which the basic-auth app needs for CSRF.

``env`` prints what a process needs to reach both services as the cluster's own account:
``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN_PATH`` (a path, not the token) and MLflow's client variables
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``; ``--server`` adds the two settings of
the MLflow server. Jobs use the admin account: a job runs as the same system user that can read
these files anyway, so a narrower account would not narrow anything.
"""

from __future__ import annotations

import argparse
import configparser
import io
import os
import secrets
import shlex
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from p2m_core.errors import P2MInputError

RAY_TOKEN = "ray_auth_token"
MLFLOW_INI = "mlflow_basic_auth.ini"
FLASK_KEY = "mlflow_flask_secret_key"
#: The MLflow account that ``init`` creates and jobs log as.
ADMIN_USER = "admin"
#: What a signed-in user may do with experiments and runs someone else created: read them.
#: Writing to another user's experiment takes a grant (docs/SCALING.md, "Who can reach what").
DEFAULT_PERMISSION = "READ"


def _check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise P2MInputError(f"{path}: mode {mode:o} lets other users read a secret; chmod go-rwx {path}")


def _write_new(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only, from the first byte (no chmod window)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def mlflow_ini(auth_db_uri: str, admin_password: str) -> str:
    """The basic-auth app's config file (the keys MLflow reads from its ``[mlflow]`` section)."""
    config = configparser.ConfigParser()
    config["mlflow"] = {
        "default_permission": DEFAULT_PERMISSION,
        "database_uri": auth_db_uri,
        "admin_username": ADMIN_USER,
        "admin_password": admin_password,
    }
    text = io.StringIO()
    config.write(text)
    return text.getvalue()


def init(folder: Path, auth_db_uri: str) -> list[Path]:
    """Create ``folder`` and its missing secret files; returns the files it created."""
    if not auth_db_uri:
        raise P2MInputError("--auth-db: the MLflow auth database URI is empty (e.g. sqlite:////mnt/shared/mlflow/basic_auth.db)")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(folder)
    wanted = {
        RAY_TOKEN: lambda: secrets.token_hex(32),
        MLFLOW_INI: lambda: mlflow_ini(auth_db_uri, secrets.token_urlsafe(24)),
        FLASK_KEY: lambda: secrets.token_hex(32),
    }
    created = []
    for name, make in wanted.items():
        path = folder / name
        if path.exists():
            _check_private(path)
            continue
        _write_new(path, make())
        created.append(path)
    return created


def read_admin(folder: Path) -> tuple[str, str]:
    """``(username, password)`` of the admin account in ``folder``'s MLflow ini."""
    path = folder / MLFLOW_INI
    config = configparser.ConfigParser()
    if not config.read(path):
        raise P2MInputError(f"{path}: missing; run `python -m ray_jobs.cluster_auth init {folder} --auth-db URI` on the head")
    section = config["mlflow"] if config.has_section("mlflow") else {}
    user, password = section.get("admin_username", ""), section.get("admin_password", "")
    if not user or not password:
        raise P2MInputError(f"{path}: [mlflow] admin_username and admin_password must both be set")
    return user, password


def environment(folder: Path, server: bool = False) -> dict[str, str]:
    """The variables ``env`` prints (see the module docstring)."""
    for name in (RAY_TOKEN, MLFLOW_INI) + ((FLASK_KEY,) if server else ()):
        path = folder / name
        if not path.is_file():
            raise P2MInputError(f"{path}: missing; the head creates it on start (`python -m ray_jobs.cluster_auth init`)")
        _check_private(path)
    user, password = read_admin(folder)
    env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(folder / RAY_TOKEN),
        "MLFLOW_TRACKING_USERNAME": user,
        "MLFLOW_TRACKING_PASSWORD": password,
    }
    if server:
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(folder / MLFLOW_INI)
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = (folder / FLASK_KEY).read_text(encoding="utf-8").strip()
    return env


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ray_jobs.cluster_auth", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="create the folder and its missing secret files (mode 600)")
    p_init.add_argument("folder", type=Path)
    p_init.add_argument("--auth-db", required=True, metavar="URI", help="database_uri of MLflow's auth store")
    p_env = sub.add_parser("env", help="print `export NAME=VALUE` lines for the cluster's processes")
    p_env.add_argument("folder", type=Path)
    p_env.add_argument("--server", action="store_true", help="also the MLflow server's auth config and secret key")
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            for path in init(args.folder, args.auth_db):
                print(f"created {path}")
        else:
            for name, value in environment(args.folder, args.server).items():
                print(f"export {name}={shlex.quote(value)}")
    except (P2MInputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
