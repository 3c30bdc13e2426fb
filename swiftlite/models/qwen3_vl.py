"""Qwen3-VL (dense): a 16-px-patch ViT with learned position embeddings whose intermediate layers also feed
the LLM ("DeepStack"), interleaved M-RoPE, and a Qwen3 language model.

One `<|image_pad|>` per merged 2x2 group of 16-px patches. The Instruct template has no default system
prompt; the Thinking checkpoints ship their own template (we always render the checkpoint's own).
"""

from swiftlite.models.registry import ModelFamily, ModelSpec, register_family

QWEN3_VL = ModelFamily(
    name="qwen3-vl",
    architectures=("Qwen3VLForConditionalGeneration",),
    config_model_types=("qwen3_vl",),
    template="qwen3-vl",
    modalities=("text", "image"),
    video=True,  # through the official processor, with torchvision (swiftlite/video.py)
    vision_tower=("model.visual.patch_embed", "model.visual.pos_embed", "model.visual.blocks"),
    # The final merger and the DeepStack mergers both project vision features into the LLM.
    aligner=("model.visual.merger", "model.visual.deepstack_merger_list"),
    language_model=("model.language_model",),
    requires=("transformers>=4.57",),
    grounding=True,
    notes="dense checkpoints (the MoE ones are another architecture); grounding with 0-1000 relative "
          "coordinates; videos with torchvision (timestamped frames)",
)


def _specs(size: str) -> list[ModelSpec]:
    return [
        ModelSpec(f"qwen3-vl-{size.lower()}-{kind.lower()}", QWEN3_VL, f"Qwen/Qwen3-VL-{size}-{kind}",
                  f"Qwen/Qwen3-VL-{size}-{kind}")
        for kind in ("Instruct", "Thinking")
    ]


register_family(QWEN3_VL, [spec for size in ("2B", "4B", "8B", "32B") for spec in _specs(size)])
