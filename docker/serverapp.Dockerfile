# The server-side app runtime: Flower's SuperExec pulls runs from the SuperLink
# (started with `--isolation process`) and runs fedsim's ServerApp in a
# subprocess. It evaluates the global model each round, so it carries fedsim
# and torch (CPU build: the server's work is light). Build from the repository root:
#   docker build -f docker/serverapp.Dockerfile -t fedsim-serverapp .
FROM python:3.11-slim
ARG TORCH_VERSION=2.13.0
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
WORKDIR /opt/fedsim
COPY pyproject.toml README.md ./
COPY fedsim ./fedsim
COPY strategies ./strategies
COPY attacks ./attacks
RUN pip install --no-cache-dir . && python -c "import fedsim.app.server_app"
ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_HOME=/tmp/flwr \
    MPLCONFIGDIR=/tmp/matplotlib \
    FEDSIM_CACHE=/tmp/fedsim-cache \
    HOME=/tmp
# a run without out-dir writes runs/<timestamp>, i.e. /runs (mounted from docker/runs)
WORKDIR /
ENTRYPOINT ["flower-superexec"]
