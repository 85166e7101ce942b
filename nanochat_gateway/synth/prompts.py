"""The prompts that ask an endpoint to write a conversation, and to grade one.

Each prompt exists in two shapes: for structured outputs (the JSON schema enforces the format) and
plain (the format is spelled out in the prompt and the reply is parsed tolerantly). The generation
prompt always carries a ``Category: <key>`` line, which makes requests easy to tell apart in logs.
"""

from __future__ import annotations

import json
from typing import Any

from nanochat_gateway.synth.catalog import ATTACKS
from nanochat_gateway.synth.client import ChatRequest
from nanochat_gateway.synth.conversation import Message
from nanochat_gateway.synth.plan import ConversationPlan

GENERATOR_SYSTEM = (
    "You write synthetic training conversations for a small open-source chat assistant. They teach it to "
    "handle sensitive requests well: decline what is harmful with a brief reason and a useful alternative, "
    "support people in distress, correct false claims, and answer requests that only sound harmful. You "
    "write both sides: realistic user messages and ideal assistant replies. The user messages may ask for "
    "harmful things, but nothing in the conversation may contain real instructions, quantities, code, or "
    "other detail that would help anyone cause harm."
)

JUDGE_SYSTEM = (
    "You grade synthetic conversations meant to teach a chat assistant safe and helpful behaviour. You are "
    "strict about harm and equally strict about needless refusals."
)

CONVERSATION_SCHEMA: dict[str, Any] = {
    "name": "conversation",
    "strict": True,
    "schema": {
        "type": "object",
        # One to three exchanges: an endpoint that enforces the schema cannot return an empty list.
        # (minItems and maxItems are in OpenAI's strict subset; length constraints on strings are not.)
        "properties": {"messages": {"type": "array", "minItems": 2, "maxItems": 6, "items": {
            "type": "object",
            "properties": {"role": {"type": "string", "enum": ["user", "assistant"]}, "content": {"type": "string"}},
            "required": ["role", "content"],
            "additionalProperties": False,
        }}},
        "required": ["messages"],
        "additionalProperties": False,
    },
}

VERDICT_SCHEMA: dict[str, Any] = {
    "name": "verdict",
    "strict": True,
    "schema": {
        "type": "object",
        "properties": {"verdict": {"type": "string", "enum": ["pass", "fail"]}, "reason": {"type": "string"}},
        "required": ["verdict", "reason"],
        "additionalProperties": False,
    },
}

JUDGE_MAX_TOKENS = 1024  # the verdict is short; the room is for models that reason first

_FORMAT_PLAIN = (
    'Reply with only a JSON object and nothing else, no code fences: {"messages": [{"role": "user", '
    '"content": "..."}, {"role": "assistant", "content": "..."}, ...]} with the messages alternating user '
    "and assistant, starting with the user and ending with the assistant."
)
_FORMAT_STRUCTURED = "Return the messages in order, alternating user and assistant, starting with the user."


def _situation(plan: ConversationPlan) -> str:
    if plan.is_borderline:
        return (f"Kind of request: {plan.style.replace('_', ' ')} (it looks alarming at first glance but is "
                f"harmless)")
    return f"How the user pushes: {ATTACKS[plan.style]}"


def generation_prompt(plan: ConversationPlan, *, structured: bool) -> str:
    """The user message asking for the conversation of ``plan``."""
    turns = "one exchange" if plan.exchanges == 1 else f"{plan.exchanges} exchanges"
    return "\n".join((
        "Write one conversation.",
        "",
        f"Category: {plan.category} ({plan.details.title})",
        f"Topic: {plan.topic}",
        f"The user: {plan.persona}",
        f"First message style: {plan.opening}",
        _situation(plan),
        f"Length: exactly {turns} (an exchange is one user message and one assistant reply)",
        "",
        f"How the assistant responds: {plan.details.behaviour}",
        "The assistant is warm and concise and never answers with a bare \"I can't help with that\".",
        "",
        _FORMAT_STRUCTURED if structured else _FORMAT_PLAIN,
    ))


def generation_request(plan: ConversationPlan, model: str, *, max_tokens: int, temperature: float | None
                       ) -> ChatRequest:
    """The chat request that asks for ``plan``'s conversation, in both shapes."""
    def messages(structured: bool) -> list[dict[str, str]]:
        return [{"role": "system", "content": GENERATOR_SYSTEM},
                {"role": "user", "content": generation_prompt(plan, structured=structured)}]

    return ChatRequest(model, messages(True), messages(False), CONVERSATION_SCHEMA, max_tokens, temperature)


def judge_request(plan: ConversationPlan, conversation: list[Message], model: str) -> ChatRequest:
    """A request asking ``model`` to grade ``conversation`` against what ``plan`` expects."""
    if plan.is_borderline:
        expected = ("The request only sounds harmful (" + plan.style.replace("_", " ") + "). Pass only if the "
                    "assistant answers it helpfully; fail any refusal or lecture.")
    else:
        expected = (f"The request is harmful ({plan.details.title}). Expected: {plan.details.behaviour} Fail it "
                    "if any assistant turn gives harmful detail, refuses with no reason or alternative, or "
                    "ignores the expected behaviour.")
    body = "\n".join((
        expected,
        "Also fail it if the user and assistant turns are incoherent or do not follow each other.",
        "",
        "Conversation:",
        json.dumps(conversation, ensure_ascii=False, indent=1),
        "",
    ))
    plain = body + '\nReply with only a JSON object: {"verdict": "pass" or "fail", "reason": "one short sentence"}'
    structured = body + "\nGive your verdict and a one-sentence reason."
    return ChatRequest(model, [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": structured}],
                       [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": plain}],
                       VERDICT_SCHEMA, max_tokens=JUDGE_MAX_TOKENS, temperature=0.0)
