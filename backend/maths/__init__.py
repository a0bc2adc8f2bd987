"""Pure math: the axis, projections, the cap and steering edits, PCA, UMAP layouts, sampling, KL. Tensors in, tensors out."""
