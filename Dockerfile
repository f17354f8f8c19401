# syntax=docker/dockerfile:1
# One image for the MASENet API (`masenet serve`, the default command) and its workers (`masenet worker`).
#
# The base image brings CUDA, cuDNN and torch; pip installs the project's other dependencies around that
# torch and never replaces it (the build fails if it would). The same image runs on CPU-only hosts.
# Build: docker build -t masenet:latest .   (BuildKit, the default builder since Docker 23)
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

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

# Dependencies layer: rebuilt only when pyproject.toml changes. The requirements of the `model` and
# `serve` extras are read from pyproject.toml; torch is pinned to the base image's own build so that pip
# either keeps it or stops with an error.
RUN --mount=type=bind,source=pyproject.toml,target=/tmp/build/pyproject.toml \
    python -c "import tomllib, torch; \
project = tomllib.load(open('/tmp/build/pyproject.toml', 'rb'))['project']; \
extras = project['optional-dependencies']; \
requirements = project['dependencies'] + extras['model'] + extras['serve']; \
open('/tmp/build/requirements.txt', 'w').write('\n'.join(requirements) + '\n'); \
open('/tmp/build/constraints.txt', 'w').write('torch==' + torch.__version__.split('+')[0] + '\n'); \
open('/tmp/build/torch-version', 'w').write(torch.__version__)" \
 && pip install --no-cache-dir -r /tmp/build/requirements.txt -c /tmp/build/constraints.txt \
 && python -c "import torch; \
assert torch.__version__ == open('/tmp/build/torch-version').read(), 'pip replaced the base image torch'" \
 && rm -rf /tmp/build

# Source layer: the packages and their data (the shipped weights), installed without touching the
# dependencies. The build context is bind-mounted, so the sources are not kept twice in the image.
RUN --mount=type=bind,source=.,target=/tmp/src,rw \
    pip install --no-cache-dir --no-deps /tmp/src \
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
