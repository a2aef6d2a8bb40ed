# rpbot on an NVIDIA GPU: CUDA toolkit (ExLlamaV2 compiles its extension on first start), torch, the gpu extra.
# Build: docker compose build          (add --build-arg WITH_FLASH_ATTN=1 for continuous batching; slow to build)
FROM nvidia/cuda:12.4.1-devel-ubuntu24.04

ARG WITH_FLASH_ATTN=0
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0+PTX" \
    PATH=/opt/venv/bin:$PATH

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential ninja-build curl \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && useradd --create-home --uid 10001 rpbot \
 && mkdir -p /data /models \
 && chown rpbot /data

WORKDIR /opt/rpbot
RUN pip install --upgrade pip && pip install "torch>=2.4"
COPY pyproject.toml README.md alembic.ini ./
COPY bot ./bot
COPY cogs ./cogs
COPY migrations ./migrations
RUN pip install ".[gpu,postgres]" \
 && if [ "$WITH_FLASH_ATTN" = "1" ]; then pip install packaging wheel && pip install flash-attn --no-build-isolation; fi

USER rpbot
WORKDIR /home/rpbot
ENV RPBOT_DATABASE_URL=sqlite+aiosqlite:////data/rpbot.sqlite3 \
    RPBOT_METRICS_PORT=9100 \
    RPBOT_METRICS_HOST=0.0.0.0
VOLUME ["/data"]
EXPOSE 9100
# Model loading and the first-start extension build take minutes: start_period in docker-compose.yml covers it.
HEALTHCHECK --interval=30s --timeout=5s --retries=3 CMD curl -fsS http://127.0.0.1:9100/healthz || exit 1
ENTRYPOINT ["rpbot"]
CMD ["run"]
