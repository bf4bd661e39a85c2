"""What every training run shares: composing a run (``IchorCLI``), the AdamW recipe, layer-wise lr decay, throughput."""
