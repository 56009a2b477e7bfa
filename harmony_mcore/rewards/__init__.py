"""Reward sources (registered by name) and shaping terms. See sources.py for the contract."""

from harmony_mcore.rewards.shaping import format_penalty, format_score, sharpness_penalty
from harmony_mcore.rewards.sources import (
    REWARDS, ProblemRollouts, RewardOptions, RewardSource, TokenStat, get_reward, problem_rewards, problem_shaping,
    soft_rank_rewards, view_has_policy_gradient,
)

__all__ = [
    "REWARDS", "ProblemRollouts", "RewardOptions", "RewardSource", "TokenStat", "format_penalty", "format_score",
    "get_reward", "problem_rewards", "problem_shaping", "sharpness_penalty", "soft_rank_rewards",
    "view_has_policy_gradient",
]
