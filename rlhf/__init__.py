"""rlhf: supervised fine-tuning, reward modelling and PPO for causal language models."""

__version__ = "0.1.0"
