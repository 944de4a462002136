"""Embedding: the model lanes, the ONNX encoder and its export, and chunking. Imports only
models, settings and errors."""
