"""PPO stage: the algorithm (`core`), rollout, and the training loop."""
