"""The composed VLM and how it is built, loaded and wrapped for training."""
