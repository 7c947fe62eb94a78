#!/bin/sh
# PostgreSQL 15 from Debian's packages, started as the official image's entrypoint does:
# POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD_FILE and /docker-entrypoint-initdb.d/*.sql|*.sh
# on the first start (an empty data directory), with UTF8 encoding; then the server, in the
# foreground, as the postgres user. Only the first start's temporary server is limited to the
# Unix socket, so a TCP probe answers once the real server runs.
set -eu
BIN=/usr/lib/postgresql/15/bin
PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export PGDATA
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /run/postgresql
    chown -R postgres:postgres "$PGDATA" /run/postgresql
    chmod 700 "$PGDATA"
    if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then  # (the secret may be readable by root only)
        install -o postgres -g postgres -m 600 "$POSTGRES_PASSWORD_FILE" /run/postgresql/password
        POSTGRES_PASSWORD_FILE=/run/postgresql/password
    fi
    export POSTGRES_USER POSTGRES_DB POSTGRES_PASSWORD_FILE
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD_FILE:-}" ]; then
        echo "postgres-entrypoint: POSTGRES_PASSWORD_FILE is not set" >&2
        exit 1
    fi
    "$BIN/initdb" --username="$POSTGRES_USER" --pwfile="$POSTGRES_PASSWORD_FILE" --encoding=UTF8 \
        --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w start
    if [ "$POSTGRES_DB" != postgres ]; then
        "$BIN/psql" -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
            -c "CREATE DATABASE \"$POSTGRES_DB\""
    fi
    for script in /docker-entrypoint-initdb.d/*; do
        case "$script" in
            *.sql) "$BIN/psql" -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -f "$script" ;;
            *.sh) . "$script" ;;
        esac
    done
    "$BIN/pg_ctl" -D "$PGDATA" -m fast -w stop
fi
rm -f /run/postgresql/password
exec "$BIN/postgres" -D "$PGDATA" -c listen_addresses='*'
