"""One tiny-checkpoint builder per model family: each module defines FAMILY and build(out_dir, **sizes)."""
