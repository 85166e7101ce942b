# syntax=docker/dockerfile:1
# nanochat-gateway: a CPU image by default, a CUDA image by build argument.
#
#   docker build -t nanochat-gateway .                                      # CPU
#   docker build -t nanochat-gateway:cuda --build-arg TORCH_VARIANT=cu128 .  # NVIDIA GPUs
#   docker build -t nanochat-gateway:sdobson --build-arg BAKE_MODEL=hf:sdobson/nanochat .
#   docker run --init -p 8000:8000 -v nanochat-cache:/cache nanochat-gateway
#
# TORCH_VARIANT names a PyTorch wheel index (https://download.pytorch.org/whl/<variant>): cpu,
# cu126, cu128, ... The CUDA wheels carry their own CUDA libraries, so the host only needs the
# NVIDIA driver and the NVIDIA container toolkit (`docker run --gpus all`).
# BAKE_MODEL (an hf: source) downloads a checkpoint into the image's cache at build time; for a
# private or gated repo pass the token as a build secret, never as an argument:
#   docker build --secret id=hf_token,env=HF_TOKEN --build-arg BAKE_MODEL=hf:owner/repo .
# See docs/deploy.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- wheel: build the package's wheel from the sources ------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY nanochat_gateway ./nanochat_gateway
COPY plugins ./plugins
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

# ---- venv: torch of the chosen variant, then the wheel with its dependencies ---------------------
FROM ${PYTHON_IMAGE} AS venv
ARG TORCH_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY constraints.txt /tmp/constraints.txt
COPY --from=wheel /dist /tmp/dist
# torch first and from PyTorch's own index: PyPI's Linux wheel would put CUDA into the CPU image.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        -c /tmp/constraints.txt torch \
 && /opt/venv/bin/pip install -c /tmp/constraints.txt "$(echo /tmp/dist/*.whl)[redis]" \
 && /opt/venv/bin/nanochat-gateway --version

# ---- model: optionally bake a checkpoint into the Hugging Face cache -----------------------------
FROM venv AS model
ARG BAKE_MODEL=""
ENV HF_HOME=/cache/huggingface XDG_CACHE_HOME=/cache
RUN --mount=type=secret,id=hf_token,required=false \
    mkdir -p /cache/huggingface \
 && if [ -n "$BAKE_MODEL" ]; then \
        if [ -s /run/secrets/hf_token ]; then export HF_TOKEN="$(cat /run/secrets/hf_token)"; fi; \
        HF_HUB_DISABLE_PROGRESS_BARS=1 /opt/venv/bin/nanochat-gateway download "$BAKE_MODEL"; \
    fi

# ---- runtime: the venv, the config and the cache, run as an unprivileged user --------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 nanochat \
 && useradd --system --uid 10001 --gid nanochat --create-home --home-dir /home/nanochat \
        --shell /usr/sbin/nologin nanochat
COPY --from=venv /opt/venv /opt/venv
COPY --from=model --chown=nanochat:nanochat /cache /cache
# The defaults, commented; mount your own file over it (docker-compose.yml mounts deploy/gateway.toml).
COPY config.toml /etc/nanochat-gateway/config.toml
# The port is fixed inside the container (map it with -p); the HEALTHCHECK below reads it from here.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/cache/huggingface \
    XDG_CACHE_HOME=/cache \
    NANOCHAT_GATEWAY__SERVER__HOST=0.0.0.0 \
    NANOCHAT_GATEWAY__SERVER__PORT=8000 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER nanochat
WORKDIR /home/nanochat
# Downloaded checkpoints (HF_HOME) and the demo model (XDG_CACHE_HOME) survive restarts.
VOLUME ["/cache"]
EXPOSE 8000
# Ready, not merely alive: 503 while the model downloads or loads, and while draining on SIGTERM.
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('NANOCHAT_GATEWAY__SERVER__PORT', '8000') + '/ready', timeout=4)"]
# SIGTERM drains: streams get [server] shutdown_grace_s, so stop with a longer timeout (docker stop -t 40).
STOPSIGNAL SIGTERM
ENTRYPOINT ["nanochat-gateway"]
CMD ["serve", "--config", "/etc/nanochat-gateway/config.toml"]
