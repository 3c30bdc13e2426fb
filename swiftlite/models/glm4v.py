"""GLM-4.1V (transformers' native `glm4v`): a 14-px-patch ViT with 2-D RoPE and interpolated learned position
embeddings, a 2x2 conv downsample, a gated MLP merger, and a GLM-4 language model with M-RoPE.

Any image size becomes a grid of 14-px patches merged 2x2 (one `<|image|>` per merged group). THUDM/glm-4v-9b is
a different, remote-code architecture: ms-swift calls that one `glm4v` (swiftlite/models/remote_code.py) and
this one `glm4_1v`, and so do we (family, template and model types); only the file names say glm4v, after
transformers' module.
"""

from swiftlite.models.registry import ModelFamily, ModelSpec, register_family

GLM4_1V = ModelFamily(
    name="glm4_1v",
    architectures=("Glm4vForConditionalGeneration",),
    config_model_types=("glm4v",),
    template="glm4_1v",
    modalities=("text", "image"),
    video=True,  # through the official processor, with torchvision (swiftlite/video.py)
    # As ms-swift: the merger is the aligner; the 2x2 downsample conv stays with the ViT (frozen with it).
    vision_tower=("model.visual.patch_embed", "model.visual.post_conv_layernorm", "model.visual.embeddings",
                  "model.visual.blocks", "model.visual.post_layernorm", "model.visual.downsample"),
    aligner=("model.visual.merger",),
    language_model=("model.language_model",),
    requires=("transformers>=4.53",),
    grounding=True,
    notes="several images per turn at native resolution; the template closes no turn, so training appends "
          "<|endoftext|> after each reply and generation also stops at <|user|>; the Thinking checkpoint answers "
          "as <think>...</think><answer>...</answer>; videos with torchvision",
)

register_family(
    GLM4_1V,
    [
        ModelSpec("glm4_1v-9b-thinking", GLM4_1V, "ZhipuAI/GLM-4.1V-9B-Thinking", "zai-org/GLM-4.1V-9B-Thinking"),
        ModelSpec("glm4_1v-9b-base", GLM4_1V, "ZhipuAI/GLM-4.1V-9B-Base", "zai-org/GLM-4.1V-9B-Base", is_chat=False),
    ],
)
