# scheduler: one replica per container. Point SCHEDULER_DATABASE_URL at your PostgreSQL
# (without it the container would start an embedded server, which is for development only).
#
#   docker build -t scheduler .
#   docker run --rm -e SCHEDULER_DATABASE_URL=postgresql://user:pass@db/app scheduler
#
# Run several containers against one database for high availability: they elect a leader.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 SCHEDULER_LOG_FORMAT=json
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scheduler ./scheduler
RUN pip install --no-cache-dir .
COPY config ./config
COPY examples ./examples

RUN useradd --system --create-home --uid 10001 scheduler
USER scheduler

# /metrics, /healthz and /readyz (bound to 127.0.0.1 by default; all interfaces in a container
# so that Prometheus and the orchestrator's probes can reach it).
ENV SCHEDULER_METRICS_PORT=9464 SCHEDULER_METRICS_HOST=0.0.0.0
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=2).status != 200)"]

# SIGTERM: stop claiming, let running jobs finish (SCHEDULER_SHUTDOWN_GRACE_S, 30 s), put the
# rest back to pending, exit 0. Give the container more than that before SIGKILL.
STOPSIGNAL SIGTERM
CMD ["scheduler", "run", "--config", "/app/config/schedules.yaml"]
