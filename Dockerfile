# srsgd-train on a CUDA PyTorch base image, with the DeepSpeed extra.
#   docker build -t srsgd-train .
#   docker run --gpus all --ipc=host -v /data:/data -v $PWD/runs:/app/runs srsgd-train \
#       run resnet50_imagenet --set data.root=/data/imagenet
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY srsgd_train ./srsgd_train
COPY launch ./launch
RUN pip install ".[deepspeed,tensorboard]"

ENTRYPOINT ["srsgd-train"]
CMD ["--help"]
