"""Generation: per-row sampling, stop words and streaming on top of transformers' generate."""
