# JupyterLab at the repo root by default; the same image runs `mtl predict` (a default model is built in),
# `mtl train`, `make run` and `make test`, all offline. docs/docker.md lists what was verified.
#   docker build -t multi-task-nlp .
#   docker run --rm -p 8888:8888 multi-task-nlp
# CUDA (not verified here; PyPI's torch is the CUDA 13 build): --build-arg TORCH_INDEX=https://pypi.org/simple

# --- build stage: the environment in /opt/venv and a default model; only those two folders reach the runtime image.
FROM python:3.11-slim AS build

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# Fixed hash seed and SOURCE_DATE_EPOCH (hash-based .pyc, no build timestamps in them): same model, same files.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    HF_HUB_OFFLINE=1 \
    MTL_ROOT=/home/mtl/app \
    PYTHONHASHSEED=0 \
    SOURCE_DATE_EPOCH=1700000000

WORKDIR /home/mtl/app

# torch first and pinned from TORCH_INDEX (CPU wheels by default; PyPI's torch is the CUDA build with nvidia-* wheels).
RUN python -m venv /opt/venv && pip install torch==${TORCH_VERSION} --index-url ${TORCH_INDEX}
# Everything else at the versions the image was verified with (docker/constraints.txt), so a later build gets the same.
# pytest but not the other dev extras (ruff, nbstripout): the image has no git and is no place for linting.
COPY pyproject.toml README.md ./
COPY docker/constraints.txt docker/
COPY mtl/ mtl/
RUN pip install -c docker/constraints.txt -e . pytest
# Files nothing imports at run time (C++ headers and test binaries, packages' own test suites), and the symbol
# tables of the largest libraries, torch and llvmlite (the dynamic linker reads .dynsym, which strip keeps): ~0.4 GB.
# There is no compiler in the image, so torch's headers could not be used anyway. binutils stays in this stage.
RUN apt-get update && apt-get install -y --no-install-recommends binutils \
    && cd "$(python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && rm -rf torch/include torch/test torch/bin/test_* torch/bin/*Test torch/bin/protoc* onnx/backend/test/data \
    && find pandas numpy scipy sklearn matplotlib sympy numba -depth -type d -name tests -exec rm -rf {} + \
    && strip --strip-unneeded torch/lib/libtorch_cpu.so torch/lib/libtorch_python.so llvmlite/binding/libllvmlite.so

COPY . .
# The default model, trained with the fp32-exact ONNX backend and seed 0 whatever CPU builds the image
# (`auto` could pick bf16 on some CPUs). This also leaves the ONNX export and the data's embeddings in .cache/.
RUN mtl train --backend onnx --seed 0 \
    && test -f saved_models/multi_task_model.safetensors && find .cache/onnx -name "*.onnx" | grep -q .

# --- runtime stage: no build tools; make for `make run` / `make test`.
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    MTL_ROOT=/home/mtl/app \
    MTL_SYSTEM_ENV=1

RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
    && useradd --create-home --uid 1000 mtl

COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=mtl:mtl /home/mtl/app /home/mtl/app
WORKDIR /home/mtl/app
USER mtl

EXPOSE 8888
# Token: $JUPYTER_TOKEN when set, else a random one printed in the logs (`docker logs`) as `...?token=<hex>`.
CMD ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", "--ServerApp.root_dir=/home/mtl/app", "--LabApp.default_url=/lab/tree/notebooks"]
