# rpbot on an NVIDIA GPU. Two stages: the CUDA toolkit compiles ExLlamaV2's extension (and flash-attn, if asked)
# once at build time, and the image that runs is the smaller CUDA *runtime* base with the ready virtual environment.
#   docker compose build                                  # or: docker build -t rpbot .
#   docker compose build --build-arg WITH_FLASH_ATTN=1    # continuous batching across channels (long build)
# Ubuntu 24.04 (Python 3.12) images start at CUDA 12.5; torch's cu126 wheels match the toolkit below.
ARG CUDA_VERSION=12.6.3
ARG UBUNTU=ubuntu24.04

FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
ARG TORCH_VERSION=2.7.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126
ARG WITH_FLASH_ATTN=0
# GPUs to compile kernels for: Turing to Hopper; +PTX lets newer cards JIT-compile from the Hopper code.
ARG TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0+PTX"
ARG MAX_JOBS=4
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST} \
    MAX_JOBS=${MAX_JOBS} \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential ninja-build git \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && pip install --upgrade pip setuptools wheel packaging
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
# The PyPI wheel of ExLlamaV2 compiles its CUDA extension on first start (needs nvcc at run time); building from the
# source distribution here compiles it once, so the runtime image needs no compiler.
RUN pip install --no-build-isolation --no-binary exllamav2 "exllamav2==0.3.2"
RUN if [ "$WITH_FLASH_ATTN" = "1" ]; then pip install --no-build-isolation flash-attn; fi
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY bot ./bot
COPY cogs ./cogs
COPY migrations ./migrations
# find_spec only locates the compiled module (loading it needs a GPU driver, which a build has not).
RUN pip install ".[gpu,postgres]" \
 && python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('exllamav2_ext') is None)"

FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 10001 rpbot \
 && mkdir -p /data /models \
 && chown rpbot /data
COPY --from=build /opt/venv /opt/venv
USER rpbot
# Working directory "/" makes the relative paths of .env.example (data/..., models/...) land on the /data volume and
# the /models mount, so one .env works on the host and in the container.
WORKDIR /
ENV RPBOT_DATABASE_URL=sqlite+aiosqlite:////data/rpbot.sqlite3 \
    RPBOT_METRICS_PORT=9100 \
    RPBOT_METRICS_HOST=0.0.0.0
VOLUME ["/data"]
EXPOSE 9100
# 503 (unhealthy) or no answer makes urlopen raise, so the command fails. Model loading takes a while after a start:
# start_period in docker-compose.yml covers it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5m --retries=3 \
  CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=4)"]
ENTRYPOINT ["rpbot"]
CMD ["run"]
