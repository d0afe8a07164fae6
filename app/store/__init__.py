"""Durable storage: the SQLite record, content-addressed images and the FAISS index."""
