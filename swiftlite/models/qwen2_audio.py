"""Qwen2-Audio: a Whisper-style audio encoder (128 mel bins, 30-s windows), a linear projector, a Qwen2 LLM.

Each audio clip is `<|audio_bos|><|AUDIO|><|audio_eos|>` in the prompt and `<|AUDIO|>` is expanded to one
token per 40 ms of (valid) audio, 750 for a full 30-s window. The registry's `vision_tower` field holds the
audio encoder here: it is "the media encoder" that freezing and LoRA targeting keep apart from the LLM.
"""

from swiftlite.models.registry import ModelFamily, ModelSpec, register_family

QWEN2_AUDIO = ModelFamily(
    name="qwen2-audio",
    architectures=("Qwen2AudioForConditionalGeneration",),
    config_model_types=("qwen2_audio",),
    template="qwen2-audio",
    modalities=("text", "audio"),
    vision_tower=("model.audio_tower",),
    aligner=("model.multi_modal_projector",),
    language_model=("model.language_model",),
    # The concrete class: transformers maps qwen2_audio to no image-text Auto class.
    auto_class="Qwen2AudioForConditionalGeneration",
    requires=("transformers>=4.45",),
    multi_image=False,  # no images at all; several audio clips per turn are fine
    notes="several clips per turn (the template numbers them 'Audio 1:', 'Audio 2:'); audio past 30 s is "
          "cut by the feature extractor, as in the official processor; WAV, FLAC, OGG and MP3 are decoded by "
          "libsndfile and resampled to 16 kHz by soxr; the base model uses the raw "
          "'<|audio_bos|><|AUDIO|><|audio_eos|>' + query format (template qwen2-audio-generation)",
)

register_family(
    QWEN2_AUDIO,
    [
        ModelSpec("qwen2-audio-7b-instruct", QWEN2_AUDIO, "qwen/Qwen2-Audio-7B-Instruct", "Qwen/Qwen2-Audio-7B-Instruct"),
        ModelSpec("qwen2-audio-7b", QWEN2_AUDIO, "qwen/Qwen2-Audio-7B", "Qwen/Qwen2-Audio-7B",
                  template="qwen2-audio-generation", is_chat=False),
    ],
)
