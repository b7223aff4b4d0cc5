"""GRPO training: the config, the rewards, a task-neutral engine, retrieval training and the run folder."""
