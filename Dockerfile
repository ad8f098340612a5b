# lstmq worker/producer image. GPU workers: build with --build-arg TF_EXTRA=gpu.
FROM python:3.11-slim
ARG TF_EXTRA=cpu
WORKDIR /app
COPY pyproject.toml README.md ./
COPY lstmq lstmq
COPY shared shared
COPY worker worker
COPY producer producer
COPY config config
RUN pip install --no-cache-dir ".[${TF_EXTRA}]"
ENV TF_CPP_MIN_LOG_LEVEL=2
ENTRYPOINT ["lstmq-worker"]
