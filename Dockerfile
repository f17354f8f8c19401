# syntax=docker/dockerfile:1
# One image for the MASENet API (`masenet serve`, the default command) and its workers (`masenet worker`).
#
# The Python the locks were resolved for; torch comes from PyPI (its Linux build brings CUDA as pip packages),
# pinned by requirements/torch.txt, and everything else from the hash-checked runtime lock, exactly as CI tests it.
# The same image runs on CPU-only hosts.
# Build: docker build -t masenet:latest .   (BuildKit, the default builder since Docker 23)
FROM python:3.11-slim-bookworm

LABEL org.opencontainers.image.title="masenet" \
      org.opencontainers.image.description="MASENet infrared small-target detection: HTTP API and batched workers"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MASENET_STORAGE=/data/jobs

# An unprivileged user, and the job storage folder it owns (a fresh named volume mounted there inherits
# this ownership).
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/masenet masenet \
 && mkdir -p /data/jobs \
 && chown masenet:masenet /data/jobs

# Dependencies layer: rebuilt only when the locks change. torch first (requirements/torch.txt), then every
# other package at its locked version with its hashes (requirements/runtime.txt: the `model`, `serve` and
# `runtimes` extras, so CPU workers get OpenVINO), then a check that torch's own requirements are met.
RUN --mount=type=bind,source=requirements,target=/tmp/requirements \
    pip install --no-cache-dir -r /tmp/requirements/torch.txt \
 && pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements/runtime.txt \
 && pip check

# Source layer: the packages and their data (the shipped weights), installed without touching the
# dependencies. The build context is bind-mounted, so the sources are not kept twice in the image.
RUN --mount=type=bind,source=.,target=/tmp/src,rw \
    pip install --no-cache-dir --no-deps --no-build-isolation /tmp/src \
 && python -c "import importlib.resources as resources; \
weights = resources.files('model') / 'weights' / 'masenet-n-synthetic.safetensors'; \
assert weights.is_file(), 'the shipped weights are missing from the package'" \
 && masenet --help > /dev/null

USER 10001:10001
WORKDIR /home/masenet

# 8000: the HTTP API; 9101: a worker's Prometheus metrics (MASENET_WORKER_METRICS_PORT).
EXPOSE 8000 9101

# The API's liveness endpoint, checked with the Python already in the image (no curl needed). Worker
# containers override this check (see docker-compose.yml).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["masenet", "serve", "--host", "0.0.0.0", "--port", "8000"]
