"""make server: a tracking server a lab can share, in one command. MLflow's basic-auth app (every
request needs a login) in front of a PostgreSQL this module starts; everything lives under one
folder (default <project>/server/): the database, the artifacts, the logs and the admin password.

    python -m nnx.edges.server                    # http://127.0.0.1:5000, this machine only
    python -m nnx.edges.server --host 0.0.0.0     # reachable from other machines, still with logins
    make server HOST=0.0.0.0 PORT=5000

PostgreSQL listens on no network interface: only on a Unix socket in a folder that only its owner
can open, so its trust authentication admits this machine's owner (and root), nobody else.
The admin password is $MLFLOW_AUTH_ADMIN_PASSWORD, else the one in <folder>/admin_password (a
0600 file), generated on the first start; it is never printed, only the file's path.
"""

import argparse
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from nnx.edges.paths import ROOT

FOLDER = ROOT / "server"
PG_PORT = 5432  # names the socket file only: the socket folder is private, so it meets no other server
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServerError(RuntimeError):
    """The server cannot be set up or started."""


def postgres_bin() -> Path:
    """The folder of PostgreSQL's initdb and pg_ctl: on PATH, else Debian's newest versioned one."""
    found = shutil.which("initdb")
    if found:  # a link to the versioned folder (Debian's /usr/local/bin/initdb), where psql is too
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if not versions:
        raise ServerError("PostgreSQL is not installed (initdb not found): on Debian or Ubuntu, `apt-get install postgresql`.")
    return Path(versions[-1])


def _as_owner() -> list:
    """PostgreSQL refuses to run as root: as root, its commands run as the postgres user."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        raise ServerError("running as root, PostgreSQL needs the postgres user and runuser; run make server as a normal user")
    return ["runuser", "-u", "postgres", "--"]


def _pg(command: list, **kwargs):
    done = subprocess.run([*_as_owner(), *command], capture_output=True, text=True, timeout=120, **kwargs)
    if done.returncode != 0:
        raise ServerError(f"{Path(command[0]).name} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def db_uri(folder: Path, database: str) -> str:
    """SQLAlchemy's URI of a database of the PostgreSQL under folder (psycopg2 named: SQLAlchemy
    2.1 would otherwise look for psycopg 3)."""
    return f"postgresql+psycopg2://postgres@/{database}?host={folder / 'socket'}&port={PG_PORT}"


def start_postgres(folder: Path) -> dict:
    """Starts the PostgreSQL under folder (creating it and the mlflow and mlflow_auth databases the
    first time); returns {database name: SQLAlchemy URI}."""
    folder = Path(folder).resolve()
    bin_, data, sock = postgres_bin(), folder / "postgres", folder / "socket"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock.mkdir(exist_ok=True, mode=0o700)
    if os.geteuid() == 0:
        for path in (folder, sock):
            shutil.chown(path, "postgres", "postgres")
        if subprocess.run([*_as_owner(), "test", "-x", str(folder)]).returncode != 0:
            raise ServerError(f"as root, PostgreSQL runs as the postgres user, who cannot enter {folder} (a folder above it is "
                              f"closed to other users): give --folder (FOLDER= for make server) outside it, e.g. /srv/nnx-server, "
                              f"or run it as a normal user")
    if not (data / "PG_VERSION").exists():
        _pg([str(bin_ / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-instructions"])
    _pg([str(bin_ / "pg_ctl"), "-D", str(data), "-l", str(folder / "postgres.log"), "-w", "start", "-o",
         f"-p {PG_PORT} -k {sock} -c listen_addresses='' -c unix_socket_permissions=0700"])
    psql = [str(bin_ / "psql"), "-h", str(sock), "-p", str(PG_PORT), "-U", "postgres", "-d", "postgres", "-tAc"]
    existing = set(_pg([*psql, "SELECT datname FROM pg_database"]).split())
    for name in ("mlflow", "mlflow_auth"):
        if name not in existing:
            _pg([*psql, f"CREATE DATABASE {name}"])
    return {name: db_uri(folder, name) for name in ("mlflow", "mlflow_auth")}


def stop_postgres(folder: Path):
    data = Path(folder).resolve() / "postgres"
    if (data / "postmaster.pid").exists():
        _pg([str(postgres_bin() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])


def _secret_file(path: Path) -> Path:
    """path, a 0600 file holding a random secret, made the first time."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
    return path


def admin_password_file(folder: Path) -> Path | None:
    """None where $MLFLOW_AUTH_ADMIN_PASSWORD gives it; else the 0600 file holding it, generated
    the first time. MLflow uses it only to create the admin user on the first start."""
    if os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        return None
    return _secret_file(Path(folder) / "admin_password")


def auth_config(folder: Path, auth_db: str, default_permission: str) -> Path:
    """MLflow's basic-auth settings (the file MLFLOW_AUTH_CONFIG_PATH names). No password in it:
    the admin's reaches MLflow through MLFLOW_AUTH_ADMIN_PASSWORD in the server's environment."""
    path = Path(folder) / "basic_auth.ini"
    # auth_cache_ttl_seconds: each request's password check is a PBKDF2 hash (slow on purpose); a
    # sweep's jobs send thousands of requests, so a checked login is trusted for 60 s per worker
    # (a changed password reaches the other worker within that time).
    path.write_text(f"[mlflow]\ndefault_permission = {default_permission}\ndatabase_uri = {auth_db}\nadmin_username = admin\n"
                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\nauth_cache_ttl_seconds = 60\n")
    path.chmod(0o600)
    return path


# MLflow's server starts a job runner and a Huey consumer beside its workers for server-side jobs
# (GenAI evaluation, prompt optimization) that nnx never submits: two more processes importing the
# whole MLflow stack at every start. A user's own setting wins.
JOBS_OFF = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

def start_mlflow(folder: Path, backend: str, *, host: str, port: int, auth_db: str | None, default_permission="READ",
                 allowed_hosts: str | None = None, workers: int = 2) -> subprocess.Popen:
    """`mlflow server` over backend, artifacts under folder/artifacts, with basic-auth unless
    auth_db is None; its own process group, so stop() ends its workers too. Log: folder/mlflow.log."""
    folder = Path(folder).resolve()
    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    command = [mlflow, "server", "--backend-store-uri", backend, "--artifacts-destination", str(folder / "artifacts"),
               "--host", host, "--port", str(port), "--workers", str(workers)]
    env = {**JOBS_OFF, **os.environ}
    if auth_db is not None:
        command += ["--app-name", "basic-auth"]
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(auth_config(folder, auth_db, default_permission))
        # The auth app's CSRF tokens must verify in every worker: one key for all, kept across restarts.
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", _secret_file(folder / "flask_secret_key").read_text().strip())
        password = admin_password_file(folder)
        if password is not None:
            env["MLFLOW_AUTH_ADMIN_PASSWORD"] = password.read_text().strip()
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    log = open(folder / "mlflow.log", "ab")
    try:
        return subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 180):
    """Waits for /health (open even with auth); MLflow takes ~30 s to answer its first request on a slow machine."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=5).read()
            return
        except (urllib.error.URLError, OSError):
            if process.poll() is not None or time.time() > deadline:
                raise ServerError(f"mlflow server did not answer on {url} within {timeout:.0f} s (exit status {process.poll()})")
            time.sleep(0.5)


def stop(process: subprocess.Popen, sig=signal.SIGTERM):
    """Ends the server and its workers (its process group)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _default_allowed_hosts(host: str, port: int) -> str | None:
    """MLflow answers only requests whose Host header is this machine's loopback or a private
    address; exposed, it must also accept the names other machines use for it."""
    if host in LOOPBACK:
        return None
    names = {"localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn(), host} - {"0.0.0.0", "::"}
    return ",".join(sorted(f"{n}{suffix}" for n in names for suffix in ("", ":*")))


WARNING = """
!!! nnx: WARNING: this tracking server on {host} has NO logins: anyone who can reach port {port} can
!!! read, change and delete every run. Use it only on a network you trust, or drop --no-auth.
"""


def main(argv=None):
    parser = argparse.ArgumentParser(prog="make server", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=FOLDER, help=f"database, artifacts, logs, password (default {FOLDER})")
    parser.add_argument("--host", default="127.0.0.1", help="the interface to serve on (default: this machine only; 0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--default-permission", default="READ", choices=["READ", "EDIT", "MANAGE", "NO_PERMISSIONS"],
                        help="what a user may do in an experiment someone else created (default READ)")
    parser.add_argument("--allowed-hosts", help="host names clients use for this machine (default: its own names)")
    parser.add_argument("--no-auth", action="store_true", help="no logins (a loud warning where exposed)")
    args = parser.parse_args(argv)
    folder = args.folder.resolve()
    if args.no_auth and args.host not in LOOPBACK:
        print(WARNING.format(host=args.host, port=args.port), file=sys.stderr, flush=True)
    try:
        uris = start_postgres(folder)
    except ServerError as err:
        sys.exit(f"make server: error: {err}")
    process = None
    try:
        process = start_mlflow(folder, uris["mlflow"], host=args.host, port=args.port,
                               auth_db=None if args.no_auth else uris["mlflow_auth"], default_permission=args.default_permission,
                               allowed_hosts=args.allowed_hosts or _default_allowed_hosts(args.host, args.port))
        shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        url = f"http://{shown}:{args.port}"
        wait_until_up(url, process)
        print(f"nnx: tracking server on {url} (PostgreSQL and artifacts in {folder}; log {folder / 'mlflow.log'})")
        if not args.no_auth:
            password = admin_password_file(folder)
            where = f"in {password} (readable by you only)" if password else "the one in $MLFLOW_AUTH_ADMIN_PASSWORD"
            print(f"  admin user: admin, password {where}; MLflow sets it when it first creates the admin user.\n"
                  f"  Train with: export MLFLOW_TRACKING_USERNAME=admin MLFLOW_TRACKING_PASSWORD=$(cat {password or '...'})\n"
                  f"              nnx-train tracking=server tracking.uri={url}\n"
                  f"  Add users for the lab: README, 'A shared tracking server'. Ctrl-C stops the server and its database.",
                  flush=True)
        process.wait()
    except KeyboardInterrupt:
        pass
    except ServerError as err:
        print(f"make server: error: {err} (see {folder / 'mlflow.log'})", file=sys.stderr)
        return 1
    finally:
        if process is not None:
            stop(process)
        stop_postgres(folder)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    sys.exit(main())
