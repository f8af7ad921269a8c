# The collector image: `docker build -t mlx-telemetry-collector .` (docker-compose.yml builds it too).
# Runs `telemetry-collector run` as an unprivileged user with JSON logs on stderr.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Install into a virtualenv in a build stage (where compilers could live) and
# copy only the virtualenv: the runtime image carries no pip cache or sources.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/mlx-telemetry
WORKDIR /src
COPY pyproject.toml README.md ./
COPY emitters ./emitters
COPY collector ./collector
RUN /opt/mlx-telemetry/bin/pip install .

FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/mlx-telemetry/bin:$PATH
RUN groupadd --system --gid 10001 mlx-telemetry \
    && useradd --system --uid 10001 --gid mlx-telemetry --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin mlx-telemetry \
    && mkdir -p /app/logs \
    && chown mlx-telemetry:mlx-telemetry /app/logs
COPY --from=build /opt/mlx-telemetry /opt/mlx-telemetry
WORKDIR /app
# Numeric, so that Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 10001:10001
ENV TELEMETRY_JSONL_DIR=/app/logs \
    TELEMETRY_LOG_FORMAT=json
# On SIGTERM the daemon finishes and acks its in-flight batch within
# --shutdown-timeout; stop_grace_period (docker stop --time) must be longer.
STOPSIGNAL SIGTERM
ENTRYPOINT ["telemetry-collector"]
CMD ["run", "--log-format", "json"]
