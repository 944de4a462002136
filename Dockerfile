# PersonAIzer self-hosted: one process, data in /data (a SQLite file), model baked into the image.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    PERSONAIZER_DATA_DIR=/data

WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
# torch's CPU build first, so the pinned requirement is satisfied without the CUDA build.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir torch==2.13.0 --index-url "$TORCH_INDEX" \
 && pip install --no-cache-dir .
# The embedding model exported to ONNX once, here, rather than on every new container's start.
ENV PERSONAIZER_ENCODER_CACHE_DIR=/opt/personaizer-cache
RUN python -c "from pathlib import Path; from app.embedding.onnx_encoder import OnnxModel; OnnxModel(Path('/opt/personaizer-cache'))"

VOLUME ["/data"]
EXPOSE 8000
CMD ["personaizer", "serve", "--host", "0.0.0.0", "--port", "8000"]
