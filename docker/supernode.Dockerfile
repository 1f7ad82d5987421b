# A SuperNode with fedsim's ClientApp and its dependencies. Each SuperNode runs
# the ClientApp in a subprocess (Flower's default isolation), so one container
# per client is enough. Build from the repository root:
#   CPU:  docker build -f docker/supernode.Dockerfile -t fedsim-supernode .
#   CUDA: docker build -f docker/supernode.Dockerfile --build-arg TORCH=cuda -t fedsim-supernode:cuda .
# (the CUDA variant installs PyPI's default torch build, which bundles the CUDA
#  runtime; the host needs an NVIDIA driver and the NVIDIA container toolkit).
FROM python:3.11-slim
ARG TORCH=cpu
ARG TORCH_VERSION=2.13.0
RUN if [ "$TORCH" = "cpu" ]; then \
        pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu; \
    elif [ "$TORCH" = "cuda" ]; then \
        pip install --no-cache-dir "torch==${TORCH_VERSION}"; \
    else echo "TORCH must be cpu or cuda, got '$TORCH'" >&2; exit 2; fi
WORKDIR /opt/fedsim
COPY pyproject.toml README.md ./
COPY fedsim ./fedsim
COPY strategies ./strategies
COPY attacks ./attacks
RUN pip install --no-cache-dir . && python -c "import fedsim.app.client_app"
ENV FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_HOME=/tmp/flwr \
    MPLCONFIGDIR=/tmp/matplotlib \
    FEDSIM_CACHE=/tmp/fedsim-cache \
    HOME=/tmp
WORKDIR /tmp
ENTRYPOINT ["flower-supernode"]
