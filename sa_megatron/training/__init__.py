"""Training: the DeepSpeed engine, the loop, checkpoints and metrics. Import submodules directly
(`sa_megatron.training.loop.train`, `sa_megatron.training.checkpoint.load_for_inference`) so that importing
this package stays light."""
