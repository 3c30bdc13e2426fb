"""Older checkpoints that load only with their own Python code (trust_remote_code, or a package of theirs).

Qwen-VL(-Chat), Qwen-Audio(-Chat), Yi-VL, MiniCPM-Llama3-V 2.5, DeepSeek-VL, InternVL2, GLM-4V-9B and CogVLM2
predate transformers' native classes for them: the module layout below is the one their own code builds
(modeling_qwen.py, modeling_minicpmv.py, ...), `requires` lists the packages that code imports (loading checks
them first and names the missing ones in one line), and their hand-written templates follow the official
prompt code (swiftlite/templates/remote_code_*.py). No tiny offline checkpoint exists for them: the remote
code is not installed here, so `tested_offline` is False and the tests check prompt text and token layout.
"""

from swiftlite.models.registry import ModelFamily, ModelSpec, register_family

QWEN_REMOTE = ("tiktoken", "transformers_stream_generator", "einops")

QWEN_VL = ModelFamily(
    name="qwen-vl",
    architectures=("QWenLMHeadModel",),
    config_model_types=("qwen",),
    config_keys=("visual",),  # Qwen (text) and Qwen-Audio share the architecture name
    template="qwen-vl",
    modalities=("text", "image"),
    vision_tower=("transformer.visual.conv1", "transformer.visual.positional_embedding", "transformer.visual.ln_pre",
                  "transformer.visual.transformer"),
    aligner=("transformer.visual.attn_pool", "transformer.visual.ln_post", "transformer.visual.proj"),
    language_model=("transformer.wte", "transformer.h", "transformer.ln_f"),
    auto_class="AutoModelForCausalLM",
    requires=QWEN_REMOTE + ("torchvision", "matplotlib"),
    grounding=True,
    remote_code=True,
    tested_offline=False,
    notes="images go into the prompt as Picture N:<img>path-or-URL</img>; the model loads them itself",
)

QWEN_AUDIO = ModelFamily(
    name="qwen-audio",
    architectures=("QWenLMHeadModel",),
    config_model_types=("qwen",),
    config_keys=("audio",),
    template="qwen-audio",
    modalities=("text", "audio"),
    vision_tower=("transformer.audio.conv1", "transformer.audio.conv2", "transformer.audio.positional_embedding",
                  "transformer.audio.blocks"),
    aligner=("transformer.audio.ln_post", "transformer.audio.proj", "transformer.audio.audio_bos_eos_token"),
    language_model=("transformer.wte", "transformer.h", "transformer.ln_f"),
    auto_class="AutoModelForCausalLM",
    requires=QWEN_REMOTE,
    multi_image=False,
    remote_code=True,
    tested_offline=False,
    notes="clips go into the prompt as Audio N:<audio>path</audio>; the model's audio_info input is not wired yet",
)

YI_VL = ModelFamily(
    name="yi-vl",
    architectures=("LlavaLlamaForCausalLM",),
    config_model_types=(),  # its model_type 'llava' is LLaVA-1.5's: only the architecture tells them apart
    template="yi-vl",
    modalities=("text", "image"),
    vision_tower=("model.vision_tower",),
    aligner=("model.mm_projector",),
    language_model=("model.embed_tokens", "model.layers", "model.norm"),
    auto_class="AutoModelForCausalLM",
    requires=("llava",),
    multi_image=False,
    remote_code=True,
    tested_offline=False,
    notes="needs the llava package of github.com/01-ai/Yi (VL/) importable; one image per dialogue",
)

MINICPM_V_2_5 = ModelFamily(
    name="minicpm-v-v2_5",
    architectures=("MiniCPMV",),
    config_model_types=("minicpmv",),
    template="minicpm-v-v2_5",
    modalities=("text", "image"),
    vision_tower=("vpm",),
    aligner=("resampler",),
    language_model=("llm.model",),
    lm_head=("llm.lm_head",),
    auto_class="AutoModel",
    requires=("timm",),
    multi_image=False,
    remote_code=True,
    tested_offline=False,
    notes="one image per dialogue, sliced into up to 9 parts of 96 query tokens each",
)

DEEPSEEK_VL = ModelFamily(
    name="deepseek-vl",
    architectures=("MultiModalityCausalLM",),
    config_model_types=("multi_modality",),
    template="deepseek-vl",
    modalities=("text", "image"),
    vision_tower=("vision_model",),
    aligner=("aligner",),
    language_model=("language_model.model",),
    lm_head=("language_model.lm_head",),
    auto_class="AutoModelForCausalLM",
    # The checkpoint has no auto_map: importing deepseek_vl registers its classes with transformers.
    requires=("deepseek_vl @ git+https://github.com/deepseek-ai/DeepSeek-VL",),
    remote_code=True,
    tested_offline=False,
    notes="576 image tokens per image (hybrid SigLIP + SAM encoders in the deepseek_vl package)",
)

INTERNVL2 = ModelFamily(
    name="internvl2",
    architectures=("InternVLChatModel",),
    config_model_types=("internvl_chat",),
    template="internvl2",
    modalities=("text", "image"),
    vision_tower=("vision_model",),
    aligner=("mlp1",),
    language_model=("language_model.model",),
    lm_head=("language_model.output",),
    auto_class="AutoModel",
    requires=("timm", "einops", "sentencepiece"),
    remote_code=True,
    tested_offline=False,
    notes="InternLM2-chat sizes (2B, 8B); 448-px tiles (up to 12 + thumbnail), 256 tokens each",
)

GLM4V = ModelFamily(
    name="glm4v",
    architectures=("ChatGLMModel", "ChatGLMForConditionalGeneration"),
    config_model_types=("chatglm",),
    config_keys=("vision_config",),  # GLM-4-9B-Chat (text) has the same architecture name
    template="glm4v",
    modalities=("text", "image"),
    vision_tower=("transformer.vision.patch_embedding", "transformer.vision.transformer"),
    aligner=("transformer.vision.linear_proj", "transformer.vision.conv", "transformer.vision.boi",
             "transformer.vision.eoi"),
    language_model=("transformer.embedding", "transformer.encoder"),
    lm_head=("transformer.output_layer",),
    auto_class="AutoModelForCausalLM",
    requires=("tiktoken", "einops", "torchvision"),
    multi_image=False,
    remote_code=True,
    tested_offline=False,
    notes="glm-4v-9b (not GLM-4.1V); one image per dialogue",
)

COGVLM2 = ModelFamily(
    name="cogvlm2",
    architectures=("CogVLMForCausalLM",),
    config_model_types=("cogvlm2",),
    template="cogvlm2",
    modalities=("text", "image"),
    vision_tower=("model.vision.patch_embedding", "model.vision.transformer"),
    aligner=("model.vision.linear_proj", "model.vision.conv", "model.vision.boi", "model.vision.eoi"),
    # The visual-expert weights sit inside each decoder layer (vision_expert_* next to language_expert_*).
    language_model=("model.embed_tokens", "model.layers", "model.norm"),
    auto_class="AutoModelForCausalLM",
    requires=("xformers", "einops", "torchvision"),
    multi_image=False,
    remote_code=True,
    tested_offline=False,
    notes="one image per dialogue, 2306 positions after <bos>; token_type_ids mark them",
)

register_family(QWEN_VL, [
    ModelSpec("qwen-vl-chat", QWEN_VL, "qwen/Qwen-VL-Chat", "Qwen/Qwen-VL-Chat"),
    ModelSpec("qwen-vl", QWEN_VL, "qwen/Qwen-VL", "Qwen/Qwen-VL", template="qwen-vl-generation", is_chat=False),
])
register_family(QWEN_AUDIO, [
    ModelSpec("qwen-audio-chat", QWEN_AUDIO, "qwen/Qwen-Audio-Chat", "Qwen/Qwen-Audio-Chat"),
    ModelSpec("qwen-audio", QWEN_AUDIO, "qwen/Qwen-Audio", "Qwen/Qwen-Audio", template="qwen-audio-generation",
              is_chat=False),
])
register_family(YI_VL, [
    ModelSpec("yi-vl-6b-chat", YI_VL, "01ai/Yi-VL-6B", "01-ai/Yi-VL-6B", torch_dtype="float16"),
    ModelSpec("yi-vl-34b-chat", YI_VL, "01ai/Yi-VL-34B", "01-ai/Yi-VL-34B", torch_dtype="float16"),
])
register_family(MINICPM_V_2_5, [
    ModelSpec("minicpm-v-v2_5-chat", MINICPM_V_2_5, "OpenBMB/MiniCPM-Llama3-V-2_5", "openbmb/MiniCPM-Llama3-V-2_5",
              torch_dtype="float16"),
])
register_family(DEEPSEEK_VL, [
    ModelSpec("deepseek-vl-1_3b-chat", DEEPSEEK_VL, "deepseek-ai/deepseek-vl-1.3b-chat", "deepseek-ai/deepseek-vl-1.3b-chat"),
    ModelSpec("deepseek-vl-7b-chat", DEEPSEEK_VL, "deepseek-ai/deepseek-vl-7b-chat", "deepseek-ai/deepseek-vl-7b-chat"),
])
register_family(INTERNVL2, [
    ModelSpec("internvl2-2b", INTERNVL2, "OpenGVLab/InternVL2-2B", "OpenGVLab/InternVL2-2B"),
    ModelSpec("internvl2-8b", INTERNVL2, "OpenGVLab/InternVL2-8B", "OpenGVLab/InternVL2-8B"),
])
register_family(GLM4V, [
    ModelSpec("glm4v-9b-chat", GLM4V, "ZhipuAI/glm-4v-9b", "THUDM/glm-4v-9b"),
])
register_family(COGVLM2, [
    ModelSpec("cogvlm2-19b-chat", COGVLM2, "ZhipuAI/cogvlm2-llama3-chat-19B", "THUDM/cogvlm2-llama3-chat-19B"),
])
