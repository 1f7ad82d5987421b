"""The server's evaluation of the global model (server.py), the cached evaluator
classifier (evaluator.py) and optional Inception-FID (inception.py)."""
