"""Online reinforcement learning (GRPO) from an SFT run, with kotune's evaluation metrics as rewards.

Above the evaluation layer: the rewards are eval's metrics (kotune.eval.metrics), computed by
the same code the report uses.
"""
