#!/bin/sh
# The two base images docker-compose.yml and the Dockerfile name, built locally from Debian
# bookworm's packages, for a Docker engine that reaches no image registry:
#
#   python:3.11.7-slim-bookworm  Debian's python3 (3.11) with venv, as `python`
#   postgres:15.10-bookworm      Debian's postgresql-15 with postgres-entrypoint.sh, which
#                                honours POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD_FILE and
#                                /docker-entrypoint-initdb.d as the official image does (UTF8)
#
# Usage (as root, with debootstrap and a Docker engine): deploy/base-images/build.sh [WORKDIR]
# WORKDIR keeps the root file systems (a second run reuses them). DEBIAN_MIRROR overrides the
# mirror. With a registry at hand, `docker pull` the official images instead.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
WORK=${1:-$(mktemp -d)}
ROOTFS_PATH="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

slim() {  # what an image does not need: package lists and caches, documentation
    rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/apt/archives/*.deb \
        "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/locale/* "$1"/tmp/*
}

if [ ! -x "$WORK/python/usr/bin/python3" ]; then
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$WORK/python" "$MIRROR"
fi
slim "$WORK/python"
# The host's certificate authorities, so that builds (pip) trust what the host trusts, a
# TLS-inspecting proxy included.
cp /etc/ssl/certs/ca-certificates.crt "$WORK/python/etc/ssl/certs/ca-certificates.crt"
tar -C "$WORK/python" -c . | docker import --change "ENV $ROOTFS_PATH" \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' --change 'CMD ["python3"]' \
    - python:3.11.7-slim-bookworm

if [ ! -x "$WORK/postgres/usr/lib/postgresql/15/bin/postgres" ]; then
    rm -rf "$WORK/postgres"
    cp -a "$WORK/python" "$WORK/postgres"
    mkdir -p "$WORK/postgres/etc/postgresql-common"
    echo "create_main_cluster = false" > "$WORK/postgres/etc/postgresql-common/createcluster.conf"
    cp /etc/resolv.conf "$WORK/postgres/etc/resolv.conf"
    chroot "$WORK/postgres" sh -c 'apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql-15'
fi
install -m 755 "$HERE/postgres-entrypoint.sh" "$WORK/postgres/usr/local/bin/docker-entrypoint.sh"
mkdir -p "$WORK/postgres/docker-entrypoint-initdb.d"
slim "$WORK/postgres"
tar -C "$WORK/postgres" -c . | docker import --change "ENV $ROOTFS_PATH" \
    --change 'ENV PGDATA=/var/lib/postgresql/data' --change 'EXPOSE 5432' \
    --change 'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' - postgres:15.10-bookworm
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' |
    grep -E '^(python:3.11.7-slim-bookworm|postgres:15.10-bookworm) '
