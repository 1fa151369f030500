"""Adapters over Hugging Face technology: ``datasets`` (DatasetStore), ``huggingface_hub`` and
a local folder of repos (HubClient), and the pieces of an HF model folder other adapters use
(its tokenizer and chat template, its config and safetensors files)."""
