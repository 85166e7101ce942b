"""Why a conversation was not written: the reason codes the sidecar records and the report explains."""

from __future__ import annotations

# Rejected: the endpoint answered, but the conversation is not fit for training. Not asked again.
REJECTION_REASONS: dict[str, str] = {
    "unparseable": "the reply held no JSON conversation",
    "truncated": "the reply was cut off at --max-tokens without a complete JSON conversation",
    "malformed": "JSON found, but not alternating user/assistant turns with text",
    "generator_refused": "the endpoint declined to write the conversation",
    "complied": "an assistant reply gives harmful detail (steps, quantities or code) without declining",
    "no_refusal": "the assistant did not decline a harmful request",
    "bare_refusal": "a refusal without a reason or a safe alternative",
    "no_support": "a self-harm reply without warmth or a pointer to help",
    "no_correction": "a misinformation reply that does not correct the claim",
    "refused_borderline": "the assistant refused a request that is fine to answer",
    "duplicate": "the first user message repeats an earlier one",
    "near_duplicate": "the first user message nearly repeats an earlier one",
    "too_long": "the conversation renders past the model's context",
    "judge_rejected": "the judge model graded it unusable",
    "judge_unparseable": "the judge model's verdict could not be read",
}

# Failed: no usable answer arrived. Asked again by a resumed run.
FAILURE_REASONS: dict[str, str] = {
    "request_failed": "retries exhausted (timeouts, connection errors, 408/409/429/5xx)",
    "endpoint_error": "the endpoint refused the request (a 4xx other than 401/403/404/408/409/429)",
}


# Reasons that mean the model did not produce the format at all, rather than bad content.
FORMAT_REASONS = frozenset({"unparseable", "truncated", "malformed"})


def explain(reason: str) -> str:
    """A short human explanation of a reason code."""
    return REJECTION_REASONS.get(reason) or FAILURE_REASONS.get(reason) or reason
