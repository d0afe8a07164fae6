"""The ML core: a ResNet18 embedding network trained as a siamese, triplet or quartet network.

Importable without FastAPI; never imports ``app``.
"""
