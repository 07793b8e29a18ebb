"""Exit 0 when the PostgreSQL at argv[1] accepts a connection (retrying for --wait seconds),
else 1. With --create, first create the URL's database (through the server's ``postgres``
database) when it does not exist: a private server starts with none but that one."""

import sys
import time

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

url = sys.argv[1]
args = sys.argv[2:]
wait = float(args[args.index("--wait") + 1]) if "--wait" in args else 0.0
deadline = time.monotonic() + wait


def connect(conninfo: str) -> psycopg.Connection:
    while True:
        try:
            return psycopg.connect(conninfo, connect_timeout=2, autocommit=True)
        except psycopg.OperationalError:
            if time.monotonic() >= deadline:
                sys.exit(1)
            time.sleep(0.1)


if "--create" in args:
    name = conninfo_to_dict(url).get("dbname") or "postgres"
    with connect(make_conninfo(url, dbname="postgres")) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
connect(url).close()
sys.exit(0)
