"""Text-only Qwen LLMs, so plain LLM fine-tuning works with the same commands: Qwen2.5 and Qwen3 (dense).

No vision tower and no aligner: the whole `model.` tree is the language model. Any checkpoint with the
same architecture (Qwen2 / QwQ for Qwen2ForCausalLM, Qwen3 base checkpoints for Qwen3ForCausalLM) is
detected from its config.json and rendered with its own chat template.
"""

from swiftlite.models.registry import ModelFamily, ModelSpec, register_family

QWEN2_5 = ModelFamily(
    name="qwen2_5",
    architectures=("Qwen2ForCausalLM",),
    config_model_types=("qwen2",),
    template="qwen2_5",
    modalities=("text",),
    language_model=("model",),
    auto_class="AutoModelForCausalLM",
    requires=("transformers>=4.37",),
    multi_image=False,
    notes="text only; the checkpoint's chat template (default system 'You are Qwen, created by Alibaba Cloud...')",
)

QWEN3 = ModelFamily(
    name="qwen3",
    architectures=("Qwen3ForCausalLM",),
    config_model_types=("qwen3",),
    template="qwen3",
    modalities=("text",),
    language_model=("model",),
    auto_class="AutoModelForCausalLM",
    requires=("transformers>=4.51",),
    multi_image=False,
    notes="text only; rendered with the checkpoint's own (hybrid-thinking) chat template",
)


def _qwen2_5(size: str) -> ModelSpec:
    name = f"qwen2_5-{size.lower().replace('.', '_')}-instruct"
    return ModelSpec(name, QWEN2_5, f"Qwen/Qwen2.5-{size}-Instruct", f"Qwen/Qwen2.5-{size}-Instruct")


def _qwen3(size: str) -> ModelSpec:
    return ModelSpec(f"qwen3-{size.lower().replace('.', '_')}", QWEN3, f"Qwen/Qwen3-{size}", f"Qwen/Qwen3-{size}")


register_family(QWEN2_5, [_qwen2_5(size) for size in ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B")])
register_family(QWEN3, [_qwen3(size) for size in ("0.6B", "1.7B", "4B", "8B", "14B", "32B")])
