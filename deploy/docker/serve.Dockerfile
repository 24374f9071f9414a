# syntax=docker/dockerfile:1
#
# fraudlite serving image: `fraudlite serve` (and `fraudlite registry` to inspect the registry).
# Base install only (`pip install .`, no extras): numpy, onnxruntime, kafka-python, prometheus-client,
# msgspec, psutil. No torch, no pandas, no test tools. Runs as an unprivileged user (uid 10001).
#
# Build from the repository root:
#   docker build -f deploy/docker/serve.Dockerfile -t fraudlite-serve:0.1.0 .

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fraudlite ./fraudlite
RUN python -m venv /opt/fraudlite \
    && /opt/fraudlite/bin/pip install . \
    && /opt/fraudlite/bin/pip uninstall --yes pip setuptools wheel

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="fraudlite-serve" \
      org.opencontainers.image.description="fraudlite streaming scorer (Kafka in, decisions out, Prometheus metrics)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 fraudlite \
    && useradd --system --uid 10001 --gid fraudlite --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin fraudlite \
    && mkdir -p /registry \
    && chown fraudlite:fraudlite /registry
COPY --from=build /opt/fraudlite /opt/fraudlite
ENV PATH=/opt/fraudlite/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /tmp
# Prometheus metrics (`--metrics-port`); the scorer listens on no other port.
EXPOSE 9108
ENTRYPOINT ["fraudlite"]
CMD ["serve", "--registry", "/registry", "--bootstrap-servers", "kafka:9092", "--metrics-host", "0.0.0.0", "--metrics-port", "9108"]
