"""vlft: fine-tune vision-language models with LoRA/QLoRA, merge, and convert to official formats."""

__version__ = "0.1.0"
