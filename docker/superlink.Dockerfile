# The SuperLink: Flower's coordinator. It holds no fedsim code: with
# `--isolation process` the ServerApp runs in the serverapp image instead.
# Build from the repository root:  docker build -f docker/superlink.Dockerfile -t fedsim-superlink .
FROM python:3.11-slim
ARG FLWR_VERSION=1.41.0
RUN pip install --no-cache-dir "flwr==${FLWR_VERSION}"
ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_HOME=/tmp/flwr \
    HOME=/tmp
WORKDIR /state
ENTRYPOINT ["flower-superlink"]
