# tunegate serve: the HTTP service on the light install (requirements/serve.txt; no torch, transformers,
# Prefect, DVC or Great Expectations). The model is not in the image: mount a served folder read-only at
# /models/current (artifacts/gate/release, or .tunegate/registry/vX.Y.Z after `tunegate rollback` fetched it).
#   docker build -t tunegate-serve .
#   docker run --rm -p 8000:8000 -v "$PWD/artifacts/gate/release:/models/current:ro" \
#     -e TUNEGATE_API_KEYS=change-me tunegate-serve
FROM python:3.11-slim

# No .pyc writes at run time (the root file system may be read-only; pip compiled the packages at install),
# logs straight to `docker logs`, no pip cache in the layers.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric UID, so Kubernetes' runAsNonRoot can verify it without resolving names.
RUN groupadd --system --gid 10001 tunegate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tunegate

# Dependencies first: this layer is rebuilt only when the serving lock changes, not on every code change. The
# lock (requirements/lock/serve.txt, from requirements/serve.txt by `make lock`) pins every package with its
# hashes, at the versions the tests ran: an image built next year installs the same wheels.
COPY requirements/lock/serve.txt /tmp/src/requirements/lock/serve.txt
RUN pip install --require-hashes --no-deps -r /tmp/src/requirements/lock/serve.txt

# The package itself without its dependencies (pyproject.toml's are the whole pipeline's), built outside
# the working folder so that no source tree shadows the installed one.
COPY pyproject.toml README.md /tmp/src/
COPY flows /tmp/src/flows
COPY tasks /tmp/src/tasks
RUN pip install --no-deps /tmp/src && rm -rf /tmp/src

# params.yaml gives the serve defaults (its serve section); TUNEGATE_* variables and flags override them.
WORKDIR /srv/tunegate
COPY params.yaml ./
# The prediction log's volume: writable by the service, kept outside the (possibly read-only) image.
RUN mkdir -p /var/lib/tunegate/predictions && chown -R 10001:10001 /var/lib/tunegate
VOLUME ["/var/lib/tunegate"]

# 0.0.0.0: reachable through the published port (127.0.0.1 would be the container's own loopback only).
# RELOAD_SECONDS: the mounted folder is polled, so replacing its content (a new release) is picked up,
# warmed and swapped in without a restart.
ENV TUNEGATE_HOST=0.0.0.0 \
    TUNEGATE_PORT=8000 \
    TUNEGATE_MODEL=/models/current \
    TUNEGATE_LOG_DIR=/var/lib/tunegate/predictions \
    TUNEGATE_RELOAD_SECONDS=30
EXPOSE 8000

USER 10001:10001

# slim has no curl: python's urllib (exit 1 on a refused connection or a non-2xx answer). Live, not ready:
# a process that is up but still warming a model is not restarted for it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('TUNEGATE_PORT', '8000') + '/v2/health/live', timeout=4)"]

ENTRYPOINT ["tunegate", "serve"]
