"""MiniCPM-V 4.6 and 4.7 (transformers' native `minicpmv4_6` / `minicpmv4_7`): a SigLIP-style NaViT ViT with a
window-attention merger inserted after one of its layers, a 2x2 MLP merger, and a Qwen3.5 language model
(Gated DeltaNet linear attention interleaved with full attention). 4.7 has the same modules and adds a canvas
M-RoPE (positions laid out over each image's overview and slices, from mm_token_type_ids and marker ids).

Each image is an overview plus up to 9 slices at 448 px, 16x downsampled (or 4x). Older MiniCPM-V releases are
remote-code architectures: MiniCPM-Llama3-V 2.5 is the `minicpm-v-v2_5` family (swiftlite/models/remote_code.py).
"""

from swiftlite.models.registry import ModelFamily, ModelSpec, register_family

MINICPM_V = ModelFamily(
    name="minicpm_v",
    architectures=("MiniCPMV4_6ForConditionalGeneration", "MiniCPMV4_7ForConditionalGeneration"),
    config_model_types=("minicpmv4_6", "minicpmv4_7"),
    template="minicpm_v",
    modalities=("text", "image"),
    # As ms-swift for MiniCPM-V (vpm / resampler): the ViT with its inserted window-attention merger is the vision
    # tower; the MLP merger that maps into the LLM's width is the aligner.
    vision_tower=("model.vision_tower",),
    aligner=("model.merger",),
    language_model=("model.language_model",),
    requires=("transformers>=5.23",),
    grounding=True,
    notes="several images per turn (overview plus slices each, with <image_id> tags); the chat template of the "
          "tiny test checkpoint is reconstructed from the processor (ChatML, one <|image_pad|> per image) because "
          "the hub template was not available offline, so fidelity is proven against MiniCPMV4_6Processor's "
          "expansion, not against the hub template; 4.7 also gets mm_token_type_ids (canvas M-RoPE); `mm list` "
          "shows the 4.6 architecture name for both; video inputs are not wired yet",
)

register_family(
    MINICPM_V,
    [
        ModelSpec("minicpm-v-4_6", MINICPM_V, "OpenBMB/MiniCPM-V-4.6", "openbmb/MiniCPM-V-4.6"),
        # The ModelScope id follows the 4.6 naming; only the Hugging Face id is in our fixtures.
        ModelSpec("minicpm-v-4_7-1b", MINICPM_V, "OpenBMB/MiniCPM-V-4.7-1B", "openbmb/MiniCPM-V-4.7-1B"),
    ],
)
