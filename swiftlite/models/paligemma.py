"""PaliGemma and PaliGemma 2 (base, "pt", and the "mix" transfer checkpoints): SigLIP vision tower, a linear
projector, a Gemma (PaliGemma 2: Gemma 2) LLM.

No chat template: a prompt is `<image>`*N + `<bos>` + prefix + `\\n` and the model completes the suffix, then
`<eos>`. The prefix (images included) attends bidirectionally, which the model reads from token_type_ids.
One user turn and one reply train as prefix and suffix.
"""

from swiftlite.models.registry import ModelFamily, ModelSpec, register_family

PALIGEMMA = ModelFamily(
    name="paligemma",
    architectures=("PaliGemmaForConditionalGeneration",),
    config_model_types=("paligemma",),
    template="paligemma",
    modalities=("text", "image"),
    vision_tower=("model.vision_tower",),
    aligner=("model.multi_modal_projector",),
    language_model=("model.language_model",),
    requires=("transformers>=4.41",),
    multi_turn=False,
    grounding=True,
    notes="base models: prefix/suffix prompts, no chat template or history; fixed tokens per image "
          "((image_size/14)^2: 256 at 224 px, 1024 at 448 px); <locNNNN>/<segNNN> tokens for detection/segmentation",
)

register_family(
    PALIGEMMA,
    [
        ModelSpec("paligemma-3b-pt-224", PALIGEMMA, "AI-ModelScope/paligemma-3b-pt-224", "google/paligemma-3b-pt-224",
                  is_chat=False),
        ModelSpec("paligemma-3b-pt-448", PALIGEMMA, "AI-ModelScope/paligemma-3b-pt-448", "google/paligemma-3b-pt-448",
                  is_chat=False),
        ModelSpec("paligemma-3b-mix-224", PALIGEMMA, "AI-ModelScope/paligemma-3b-mix-224",
                  "google/paligemma-3b-mix-224", is_chat=False),
        ModelSpec("paligemma2-3b-pt-224", PALIGEMMA, "AI-ModelScope/paligemma2-3b-pt-224",
                  "google/paligemma2-3b-pt-224", is_chat=False),
    ],
)
