# Config-only stand-in for InternVL's configuration_intern_vit.py, used by tools/check_serving.py for vlft's
# tiny test checkpoints (whose remote-code files are placeholders). A real model folder ships OpenGVLab's file.
from transformers import PretrainedConfig


class InternVisionConfig(PretrainedConfig):
    model_type = "intern_vit_6b"

    def __init__(self, num_channels=3, patch_size=14, image_size=224, qkv_bias=False, hidden_size=3200,
                 num_attention_heads=25, intermediate_size=12800, qk_normalization=True, num_hidden_layers=48,
                 use_flash_attn=False, hidden_act="gelu", norm_type="rms_norm", layer_norm_eps=1e-6,
                 dropout=0.0, drop_path_rate=0.0, attention_dropout=0.0, initializer_range=0.02,
                 initializer_factor=0.1, **kwargs):
        super().__init__(**kwargs)
        self.num_channels, self.patch_size, self.image_size = num_channels, patch_size, image_size
        self.qkv_bias, self.hidden_size, self.num_attention_heads = qkv_bias, hidden_size, num_attention_heads
        self.intermediate_size, self.qk_normalization = intermediate_size, qk_normalization
        self.num_hidden_layers, self.use_flash_attn, self.hidden_act = num_hidden_layers, use_flash_attn, hidden_act
        self.norm_type, self.layer_norm_eps, self.dropout = norm_type, layer_norm_eps, dropout
        self.drop_path_rate, self.attention_dropout = drop_path_rate, attention_dropout
        self.initializer_range, self.initializer_factor = initializer_range, initializer_factor
