# gitlab-hook: one image for every role; the command picks it (serve, web, worker, bot, check).
#
#   docker build -t gitlab-hook .
#   docker run --init --stop-timeout 40 -p 8080:8080 -v gitlab-hook-data:/data \
#       -e GITLAB_WEBHOOK_SECRET=... gitlab-hook                    # serve: web + worker, one container
#   docker run ... gitlab-hook web --host 0.0.0.0 --port 8080       # or one role per container
#   docker run ... gitlab-hook worker
#   docker run ... gitlab-hook bot
#
# tests/test_deploy.py lints this file (hadolint and our own rules) and runs its COPY and pip
# steps in a fresh venv, then the HEALTHCHECK against the installed `gitlab-hook web`.
# Bump the base image on purpose (a new tag), never implicitly: no `latest`.
FROM python:3.11.14-slim-bookworm

LABEL org.opencontainers.image.title="gitlab-hook" \
      org.opencontainers.image.description="GitLab webhooks that start a stopped CI runner VM on Yandex Cloud, report failed migrations to Telegram, and steer the runners from chat." \
      org.opencontainers.image.licenses="MIT"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    DATA_DIR=/data

WORKDIR /app

# Dependencies first: this layer is reused until requirements.txt changes.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# The package itself, with no dependency resolution of its own (all pinned above).
COPY pyproject.toml README.md /src/
COPY gitlab_hook /src/gitlab_hook
COPY bot /src/bot
RUN pip install --no-cache-dir --no-deps /src && pip check

# A numeric non-root user, so Kubernetes' runAsNonRoot can verify it without a runAsUser.
RUN groupadd --system --gid 10001 gitlab-hook \
    && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin gitlab-hook \
    && mkdir -p /data \
    && chown 10001:10001 /data

# SQLite files (queue, outbox, dedupe records, uptime ledger) and Prometheus' multiprocess files.
VOLUME ["/data"]
USER 10001:10001
EXPOSE 8080

# Only web and serve answer HTTP (on 8080: the check assumes that port); for the other roles
# (worker, bot) it passes while the process lives. Python, not curl: the slim image has no curl.
# Kubernetes ignores this and uses the probes in deploy/k8s instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; argv = set(open('/proc/1/cmdline', 'rb').read().split(bytes(1))); sys.exit(0) if not argv & {b'web', b'serve'} else urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

# SIGTERM drains: gunicorn finishes in-flight requests, the worker its running tasks (the rest
# stay queued), serve stops both. Give it up to 30 s (docker run --stop-timeout 40).
STOPSIGNAL SIGTERM
ENTRYPOINT ["gitlab-hook"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
