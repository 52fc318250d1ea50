"""The TwinFlow family: one objective (twinflow_core/objective.py), three presets of its `probs` buckets.

twinflow {1,1,1,1}; rcgm {1,1,1,0} without rectify (the official "RCGM in practice"); fm {mul} with
consistc_ratio = enhanced_ratio = estimate_order = 0 (plain flow matching, sampled with Euler).
"""

from twinflow_core.objective import ObjectiveConfig, TwinFlowObjective
from twinflow_core.objectives import Method, register

register(
    Method(
        "twinflow",
        ObjectiveConfig,
        TwinFlowObjective,
        {},
        toy={"loss": "l2"},
        summary="TwinFlow: RCGM any-step target + self-adversarial twin branch (adv) + L_rectify",
    )
)
register(
    Method(
        "rcgm",
        ObjectiveConfig,
        TwinFlowObjective,
        {"probs": {"e2e": 1.0, "mul": 1.0, "any": 1.0, "adv": 0.0}, "dist_match_cof": 0.0},
        toy={"loss": "l2"},
        summary="RCGM: the N-th order recursive consistency target, no twin branch",
    )
)
register(
    Method(
        "fm",
        ObjectiveConfig,
        TwinFlowObjective,
        {
            "probs": {"e2e": 0.0, "mul": 1.0, "any": 0.0, "adv": 0.0},
            "consistc_ratio": 0.0,
            "enhanced_ratio": 0.0,
            "estimate_order": 0,
            "dist_match_cof": 0.0,
        },
        sampler={"style": "euler"},
        toy={"loss": "l2"},
        summary="plain flow matching (r = t)",
    )
)
