"""Mixture-of-experts models built from dense ones (`mergesmith moe`, mergekit-moe's config)."""
