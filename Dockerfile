# An inferis worker image: the SDK, the engine and the ONNX Runtime backend.
# Build from the repository root:  docker build -t inferis .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the distribution is built from (pyproject.toml names README.md as
# its readme); the top-level folders are mapped into the inferis.* namespace.
COPY pyproject.toml README.md ./
COPY inferis ./inferis
COPY client ./client
COPY engine ./engine
COPY lua ./lua
RUN pip install '.[engine,gateway]'

RUN useradd --create-home --shell /usr/sbin/nologin inferis
USER inferis
WORKDIR /home/inferis

# The worker loads the Functions library into Redis itself when it connects.
CMD ["inferis", "worker", "--redis", "redis://redis:6379"]
