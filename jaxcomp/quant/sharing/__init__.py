"""Parameter sharing and real storage: k-means codebooks, trained centroids, HashedNets, model files.

The public names are re-exported by :mod:`jaxcomp.quant`.
"""
