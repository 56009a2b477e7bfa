"""Model families (HF config -> Megatron config + layer spec) and the per-stage GPTModel builder."""
