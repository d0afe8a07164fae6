"""The web service: a FastAPI app over the ML core in ``model``."""
