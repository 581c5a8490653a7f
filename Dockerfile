# syntax=docker/dockerfile:1
# pixelfleet's container image: two targets from one file.
#
#   docker build --target cpu  -t pixelfleet:0.1.0-cpu  .
#   docker build --target cuda -t pixelfleet:0.1.0-cuda .    # the image kuberay/*.yaml name
#   docker run --rm -p 8000:8000 --shm-size=2g pixelfleet:0.1.0-cpu --insecure   # no auth: see README
#
# Stages: build-base (a virtual environment and the project's sources) -> build-cpu / build-cuda
# (pip install with constraints.txt, as the Makefile does: the CPU target takes the CPU wheel of
# torch, the CUDA target PyPI's CUDA wheel, whose CUDA libraries come as pip packages, plus
# onnxruntime-gpu) -> runtime (a non-root user, no compiler, no pip index) -> cpu / cuda.
# The weights are inside: the super-resolution model folders are package data of
# pixelfleet.models (models/weights), RapidOCR's ONNX models and Tesseract's eng data come in
# their wheels. Nothing is fetched at run time (HF_HUB_OFFLINE=1, Ray's usage stats off).
# The CUDA target needs only the NVIDIA driver on the host (the NVIDIA container toolkit, or the
# device plugin on Kubernetes).

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build-base
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv && pip install --upgrade pip
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY pixelfleet/ pixelfleet/
COPY serve/ serve/
COPY jobs/ jobs/
COPY deployments/ deployments/
COPY models/ models/
COPY train/ train/

FROM build-base AS build-cpu
# torch's CPU wheel (2.13.0+cpu satisfies constraints.txt's torch==2.13.0)
RUN pip install --constraint constraints.txt \
        --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple . \
    && python -c "import pixelfleet.serve.app, pixelfleet.models.modelcard as m; assert (m.BUILTIN_WEIGHTS / 'srresnet-x4' / 'model.safetensors').is_file()"

FROM build-base AS build-cuda
# onnxruntime-gpu provides the same module as onnxruntime (a dependency of rapidocr): remove the
# CPU one, then put the GPU one's files back
RUN pip install --constraint constraints.txt ".[gpu]" \
    && ORT_GPU="$(pip freeze | grep -i '^onnxruntime-gpu==')" \
    && pip uninstall --yes onnxruntime \
    && pip install --no-deps --force-reinstall "$ORT_GPU" \
    && python -c "import pixelfleet.serve.app, pixelfleet.models.modelcard as m; assert (m.BUILTIN_WEIGHTS / 'srresnet-x4' / 'model.safetensors').is_file()"

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
# libGL and GLib: opencv-python (RapidOCR's dependency) links them
RUN apt-get update \
    && apt-get install --yes --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 1000 pixelfleet \
    && useradd --uid 1000 --gid 1000 --create-home --home-dir /home/pixelfleet --shell /bin/bash pixelfleet
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    PIP_NO_INDEX=1 \
    HOME=/home/pixelfleet
WORKDIR /app
# run configs for `pixelfleet train` (the RayJobs in kuberay/ name /app/train/configs/*.yaml)
COPY train/configs/ /app/train/configs/
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
USER 1000:1000
# Ray starts in-process; serve on every interface of the container. Without auth configured
# (a config with auth.enabled, README "Security") `pixelfleet up` refuses a non-loopback host:
# append `--config /etc/pixelfleet/app.yaml` (mounted) or, knowingly, `--insecure`.
ENTRYPOINT ["pixelfleet", "up", "--host", "0.0.0.0", "--port", "8000"]
CMD []

FROM runtime AS cuda
COPY --from=build-cuda /opt/venv /opt/venv
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# the default target (last): CPU
FROM runtime AS cpu
COPY --from=build-cpu /opt/venv /opt/venv
