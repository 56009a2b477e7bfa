"""harmony_mcore: Self-Harmony label-free test-time RL on Megatron-Core."""

__version__ = "0.1.0"
