"""The `sa-megatron` command line."""
