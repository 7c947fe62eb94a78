# auditflow: one image for both services (the gateway and the processor), run as a non-root
# user. Build: docker build -t auditflow .   (docker-compose.yml builds it too)
#
# Stage 1 builds wheels of auditflow and its runtime dependencies (with the PostgreSQL driver);
# stage 2 installs only those wheels: no compiler, no build tools, no test or dev packages.

FROM python:3.11.7-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY auditflow ./auditflow
COPY gateway ./gateway
COPY processor ./processor
RUN pip install --no-cache-dir --upgrade pip==24.3.1 \
 && pip wheel --no-cache-dir --wheel-dir /wheels ".[postgres]"

FROM python:3.11.7-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 auditflow \
 && useradd --system --uid 10001 --gid auditflow --home-dir /var/lib/auditflow --create-home \
      --shell /usr/sbin/nologin auditflow
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --no-index --find-links /tmp/wheels "auditflow[postgres]" \
 && rm -rf /tmp/wheels
USER auditflow
WORKDIR /var/lib/auditflow
# gateway gRPC, processor gRPC, gateway REST/status page
EXPOSE 50051 50052 8080
# Commands come from docker-compose.yml (or your orchestrator); alone, the image shows help.
CMD ["auditflow-gateway", "--help"]
