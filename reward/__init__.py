"""Everything that turns human judgements into a reward: preference data, labeling, reward models."""
