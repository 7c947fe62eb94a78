# auditflow: one image for both services (the gateway and the processor), run as a non-root
# user. Build: docker build -t auditflow .   (docker-compose.yml builds it too)
#
# Stage 1 installs auditflow and its runtime dependencies (with the PostgreSQL driver), at the
# exact versions of constraints.txt, into a virtual environment; stage 2 copies that
# environment alone: no wheels, compiler, build tools, test or dev packages, and no layer
# holding files a later layer deletes.

FROM python:3.11.7-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/auditflow
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY auditflow ./auditflow
COPY gateway ./gateway
COPY processor ./processor
RUN /opt/auditflow/bin/pip install --constraint constraints.txt ".[postgres]"

FROM python:3.11.7-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/auditflow/bin:$PATH
RUN groupadd --system --gid 10001 auditflow \
 && useradd --system --uid 10001 --gid auditflow --home-dir /var/lib/auditflow --create-home \
      --shell /usr/sbin/nologin auditflow
COPY --from=build /opt/auditflow /opt/auditflow
USER auditflow
WORKDIR /var/lib/auditflow
# gateway gRPC, processor gRPC, gateway REST/status page
EXPOSE 50051 50052 8080
# Commands come from docker-compose.yml (or your orchestrator); alone, the image shows help.
CMD ["auditflow-gateway", "--help"]
