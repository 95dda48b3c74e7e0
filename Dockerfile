# syntax=docker/dockerfile:1
# One image, two entry points: inferwatch-exporter (the DaemonSet) and inferwatch-remediator
# (the Deployment). The chart sets the command; the default is the exporter.
#
#   docker build -t ghcr.io/inferwatch/inferwatch:0.1.0 .
#   docker run --rm ghcr.io/inferwatch/inferwatch:0.1.0 --simulate default
#   docker run --rm --entrypoint inferwatch-remediator ghcr.io/inferwatch/inferwatch:0.1.0 --help
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# Build stage: build the project wheel and its dependencies' wheels; pip, setuptools and any
# compiler stay here.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY exporter/ exporter/
COPY remediations/ remediations/
RUN python -m venv /opt/inferwatch \
 && /opt/inferwatch/bin/pip install --no-compile . \
 && /opt/inferwatch/bin/pip uninstall -y pip setuptools wheel

# Runtime stage: the slim base, the virtual environment, a non-root user; nothing else.
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="inferwatch" \
      org.opencontainers.image.description="Inferwatch exporter and remediator for LLM inference on NVIDIA GPUs" \
      org.opencontainers.image.source="https://github.com/inferwatch/inferwatch" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
RUN groupadd --system --gid 10001 inferwatch \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin inferwatch
COPY --from=build /opt/inferwatch /opt/inferwatch
ENV PATH=/opt/inferwatch/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_DRIVER_CAPABILITIES=utility
USER 10001:10001
# 9835: exporter /metrics; 9836: remediator webhook.
EXPOSE 9835 9836
ENTRYPOINT ["inferwatch-exporter"]
