# syntax=docker/dockerfile:1
#
# fraudlite training image: `fraudlite retrain` (scheduler or one-off), `collect` (label store),
# `generate`, `train`, `compress`, `replay` of Parquet files. Installs the `train` extra (torch CPU,
# scikit-learn, pandas, pyarrow, onnx). Runs as an unprivileged user (uid 10001).
#
# Build from the repository root:
#   docker build -f deploy/docker/train.Dockerfile -t fraudlite-train:0.1.0 .
#
# TORCH_INDEX_URL points pip at CPU-only torch wheels (the default wheel index would pull CUDA
# libraries worth several GB). Set it to "" to use only the default index.

FROM python:3.11.14-slim-bookworm AS build
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fraudlite ./fraudlite
RUN python -m venv /opt/fraudlite \
    && /opt/fraudlite/bin/pip install ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} ".[train]" \
    && /opt/fraudlite/bin/pip uninstall --yes pip setuptools wheel

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="fraudlite-train" \
      org.opencontainers.image.description="fraudlite retrain scheduler, label store collector and training tools" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 fraudlite \
    && useradd --system --uid 10001 --gid fraudlite --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin fraudlite \
    && mkdir -p /registry /store /data \
    && chown fraudlite:fraudlite /registry /store /data
COPY --from=build /opt/fraudlite /opt/fraudlite
ENV PATH=/opt/fraudlite/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    OMP_NUM_THREADS=2
USER 10001:10001
WORKDIR /tmp
# Retrain scheduler metrics (`--metrics-port`).
EXPOSE 9109
ENTRYPOINT ["fraudlite"]
CMD ["retrain", "--help"]
