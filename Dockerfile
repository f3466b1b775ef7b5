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

STOPSIGNAL SIGTERM
CMD ["scheduler", "run", "--config", "/app/config/schedules.yaml"]
