"""The dataset readers: one module per format (LLaVA, ShareGPT, InternVL meta; JSON/JSONL, parquet, save_to_disk)
and the registries that tell which one reads a file. Their public names are in `vlft.data.formats`."""
