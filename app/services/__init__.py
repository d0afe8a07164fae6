"""Service objects: the request handlers' only way to the model, the store and the jobs."""
