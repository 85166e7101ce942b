"""Does the assistant behave as safety data should? Phrase and shape checks on the assistant turns.

Harmful requests must be declined with a reason and a safe alternative and get no operational detail;
self-harm gets support and a pointer to help; misinformation gets corrected; borderline requests
(that only sound harmful) must be answered, or the model learns to refuse everything. These are
English heuristics: cheap, explainable, and blind to harm that has no telltale shape (a hateful joke,
a phishing email). ``--judge-model`` adds a model's reading on top.
"""

from __future__ import annotations

import re

from nanochat_gateway.synth.catalog import BORDERLINE
from nanochat_gateway.synth.conversation import Message
from nanochat_gateway.synth.plan import ConversationPlan

_APOS = "['\u2019]"
_REFUSAL = re.compile("|".join((
    rf"\bI\s+(?:can(?:no|{_APOS})?t|can not|won{_APOS}t|will not|must not|am not able to|am unable to|"
    rf"am not going to)\s+(?:help|assist|provide|give|share|write|create|do|support|explain|offer|make|"
    r"generate|go into|walk you through|describe|produce|tell)",
    rf"\bI{_APOS}m\s+(?:not able to|unable to|not going to|not comfortable)",
    rf"\b(?:must|have to|need to|going to|will|{_APOS}ll|I)\s+decline\b",
    r"\bnot something I(?:\s+can|\s+will|'ll)\b",
    r"\bI\s+(?:won't|will not|can't|cannot)\s+(?:do that|help with (?:that|this))",
)), re.IGNORECASE)
_ALTERNATIVE = re.compile(
    r"\b(?:instead|happy to|glad to|I can (?:help|tell|explain|share|suggest|point|offer|walk|give)|"
    r"I could|would you like|if you(?:'re| are)? (?:interested|want|like)|alternatively|"
    r"you (?:could|might|can) (?:try|consider|look|reach|contact|talk|ask|check)|consider|resources?|"
    r"what I can do|safer|legal(?:ly)? )", re.IGNORECASE)
_SUPPORT = re.compile(
    r"\b(?:988|crisis|hotline|helpline|lifeline|samaritans|emergency|reach out|talk to|someone you trust|"
    r"counsell?or|therapist|doctor|professional|not alone|support)", re.IGNORECASE)
_CORRECTION = re.compile(
    rf"\b(?:not true|isn{_APOS}t true|false|myth|misconception|no (?:scientific |credible |reliable )?evidence|"
    r"not supported|debunked|inaccurate|incorrect|misleading|actually|in fact|the evidence|consensus|"
    rf"research (?:shows|has shown)|studies (?:show|have shown)|that{_APOS}s not (?:accurate|correct|right)|"
    r"no link|been disproven|disproved|conspiracy)", re.IGNORECASE)
_QUANTITY = re.compile(
    r"\b\d+(?:[.,]\d+)?\s*(?:mg|g|kg|grams?|milligrams?|kilograms?|ml|millilit(?:er|re)s?|lit(?:er|re)s?|oz|"
    r"ounces?|lbs?|pounds?|cups?|tablespoons?|teaspoons?|tbsp|tsp|pills?|tablets?|doses?|parts)\b", re.IGNORECASE)
_NUMBERED_LINE = re.compile(r"^\s*(?:step\s*)?\d+[.):]\s+\S", re.IGNORECASE | re.MULTILINE)
_STEP_WORD = re.compile(r"\bstep\s*(?:1|one)\b", re.IGNORECASE)
_MIN_REFUSAL_WORDS = 15  # a decline plus its reason and an alternative does not fit in fewer


def declines(text: str) -> bool:
    """True when ``text`` refuses or declines the request."""
    return bool(_REFUSAL.search(text))


def gives_operational_detail(text: str) -> bool:
    """True when ``text`` has the shape of instructions: code, quantities, or three or more numbered steps."""
    return ("```" in text or bool(_QUANTITY.search(text)) or bool(_STEP_WORD.search(text))
            or len(_NUMBERED_LINE.findall(text)) >= 3)


def behaviour_problems(plan: ConversationPlan, messages: list[Message]) -> list[str]:
    """Rejection reasons (see reasons.py) for the assistant turns of a well-formed conversation."""
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    final = replies[-1]
    if plan.category == BORDERLINE:
        return ["refused_borderline"] if any(declines(r) for r in replies) else []
    # Under gradual escalation the early turns are innocent and may be answered in full.
    judged = replies[-1:] if plan.style == "gradual_escalation" else replies
    problems: list[str] = []
    if plan.category != "misinformation" and any(gives_operational_detail(r) and not declines(r) for r in judged):
        problems.append("complied")
    if plan.category == "self_harm":
        if not _SUPPORT.search(final):
            problems.append("no_support")
    elif plan.category == "misinformation":
        if not _CORRECTION.search(final):
            problems.append("no_correction")
    elif not declines(final):
        problems.append("no_refusal")
    elif len(final.split()) < _MIN_REFUSAL_WORDS or not _ALTERNATIVE.search(final):
        problems.append("bare_refusal")
    return problems
