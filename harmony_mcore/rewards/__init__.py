"""Reward sources (registered by name) and shaping terms. See sources.py for the contract."""

from harmony_mcore.rewards.shaping import format_penalty, format_score, sharpness_penalty
from harmony_mcore.rewards.sources import (
    REWARDS, ProblemRollouts, RewardOptions, RewardSource, get_reward, problem_rewards, problem_shaping,
    soft_rank_rewards, view_has_policy_gradient,
)
from harmony_mcore.rewards.token import response_mean, token_entropy, token_neg_entropy, token_self_certainty

__all__ = [
    "REWARDS", "ProblemRollouts", "RewardOptions", "RewardSource", "format_penalty", "format_score",
    "get_reward", "problem_rewards", "problem_shaping", "response_mean", "sharpness_penalty", "soft_rank_rewards",
    "token_entropy", "token_neg_entropy", "token_self_certainty", "view_has_policy_gradient",
]
