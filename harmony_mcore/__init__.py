"""harmony_mcore: Self-Harmony label-free test-time RL on Megatron-Core."""

from harmony_mcore.compat import hide_unloadable_torch_extras

__version__ = "0.1.0"

hide_unloadable_torch_extras()  # before anything imports transformers (see harmony_mcore.compat)
