"""The conversation shapes OpenAI accepts, through the openai SDK: a lone system message, system
messages later on, a final assistant message continued (or closed), and a tools list sent without
a tool_choice that forces a call (test_api_structured covers the forced calls). Each chat answer is checked against /v1/completions on the token ids the
documented rendering gives, so the test pins the rendering itself."""

from __future__ import annotations

import openai
import pytest
from test_chat_template import expected_ids


async def same_as_completion(gateway, client, messages: list[dict], ids: list[int], **extra) -> str:
    args = {"model": gateway.model_id, "max_tokens": 8, "temperature": 0}
    chat = await client.chat.completions.create(messages=messages, extra_body=extra or None, **args)
    text = await client.completions.create(prompt=ids, **args)
    assert chat.usage.prompt_tokens == len(ids)
    assert chat.choices[0].message.content == text.choices[0].text
    assert chat.choices[0].finish_reason == text.choices[0].finish_reason
    return chat.choices[0].message.content


S = {"role": "system", "content": "Be brief."}
U = {"role": "user", "content": "Name a color."}
A = {"role": "assistant", "content": "Blue, and"}


async def test_a_lone_system_message_is_the_user_turn(gateway, client):
    tok = gateway.state.model.tokenizer
    await same_as_completion(gateway, client, [S], expected_ids(tok, ("user", "Be brief.")))


async def test_a_later_system_message_goes_before_the_next_user_message(gateway, client):
    tok = gateway.state.model.tokenizer
    messages = [U, {"role": "assistant", "content": "Red."}, {"role": "developer", "content": "Answer in French."},
                {"role": "user", "content": "Another?"}]
    expected = expected_ids(tok, ("user", "Name a color."), ("assistant", "Red."),
                       ("user", "Answer in French.\n\nAnother?"))
    await same_as_completion(gateway, client, messages, expected)


async def test_a_final_assistant_message_is_continued(gateway, client):
    tok = gateway.state.model.tokenizer
    continued = expected_ids(tok, ("user", "Name a color."), ("assistant", "Blue, and"), open_new=False, keep_open=True)
    await same_as_completion(gateway, client, [U, A], continued)
    await same_as_completion(gateway, client, [U, A], continued, continue_final_message=True,
                             add_generation_prompt=False)


async def test_a_final_assistant_message_can_be_closed_and_answered(gateway, client):
    tok = gateway.state.model.tokenizer
    closed = expected_ids(tok, ("user", "Name a color."), ("assistant", "Blue, and"))
    await same_as_completion(gateway, client, [U, A], closed, continue_final_message=False)
    await same_as_completion(gateway, client, [U, A], closed, add_generation_prompt=True)


async def test_continue_final_message_without_an_assistant_message_is_a_400(gateway, client):
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model=gateway.model_id, messages=[U], max_tokens=2,
                                             extra_body={"continue_final_message": True})
    assert err.value.code == "invalid_conversation" and err.value.param == "continue_final_message"


async def test_two_assistant_messages_in_a_row_are_still_a_400(gateway, client):
    with pytest.raises(openai.BadRequestError) as err:
        await client.chat.completions.create(model=gateway.model_id, messages=[U, A, A], max_tokens=2)
    assert err.value.code == "invalid_conversation" and err.value.param == "messages.2.role"


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}]


@pytest.mark.parametrize("tool_choice", [None, "none"])
async def test_tools_that_need_not_be_called_are_ignored(gateway, client, tool_choice):
    tok = gateway.state.model.tokenizer
    extra = {"tool_choice": tool_choice} if tool_choice else {}
    args = {"model": gateway.model_id, "messages": [U], "max_tokens": 6, "temperature": 0}
    with_tools = await client.chat.completions.create(tools=TOOLS, parallel_tool_calls=False, **extra, **args)
    plain = await client.chat.completions.create(**args)
    assert with_tools.choices[0].message.content == plain.choices[0].message.content
    assert with_tools.choices[0].message.tool_calls is None
    assert with_tools.usage.prompt_tokens == len(expected_ids(tok, ("user", "Name a color.")))  # tools not rendered
