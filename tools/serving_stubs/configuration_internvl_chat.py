# Config-only stand-in for InternVL's configuration_internvl_chat.py (see configuration_intern_vit.py).
from transformers import LlamaConfig, PretrainedConfig, Qwen2Config

from .configuration_intern_vit import InternVisionConfig
from .configuration_internlm2 import InternLM2Config

_LLM_CONFIGS = {"InternLM2ForCausalLM": InternLM2Config, "Qwen2ForCausalLM": Qwen2Config,
                "LlamaForCausalLM": LlamaConfig}


class InternVLChatConfig(PretrainedConfig):
    model_type = "internvl_chat"
    is_composition = True

    def __init__(self, vision_config=None, llm_config=None, use_backbone_lora=0, use_llm_lora=0, select_layer=-1,
                 force_image_size=None, downsample_ratio=0.5, template=None, dynamic_image_size=False,
                 use_thumbnail=False, ps_version="v1", min_dynamic_patch=1, max_dynamic_patch=6, **kwargs):
        super().__init__(**kwargs)
        vision_config = dict(vision_config or {})
        llm_config = dict(llm_config or {"architectures": ["InternLM2ForCausalLM"]})
        self.vision_config = InternVisionConfig(**vision_config)
        self.llm_config = _LLM_CONFIGS[llm_config["architectures"][0]](**llm_config)
        self.use_backbone_lora, self.use_llm_lora, self.select_layer = use_backbone_lora, use_llm_lora, select_layer
        self.force_image_size, self.downsample_ratio, self.template = force_image_size, downsample_ratio, template
        self.dynamic_image_size, self.use_thumbnail, self.ps_version = dynamic_image_size, use_thumbnail, ps_version
        self.min_dynamic_patch, self.max_dynamic_patch = min_dynamic_patch, max_dynamic_patch

    def to_dict(self):
        output = super().to_dict()
        output["vision_config"] = self.vision_config.to_dict()
        output["llm_config"] = self.llm_config.to_dict()
        return output
