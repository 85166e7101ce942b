"""Bodies of the tokenizer endpoints, in vLLM's shapes: POST /tokenize (a prompt, or chat
messages rendered as /v1/chat/completions renders them), POST /detokenize, GET /tokenizer_info."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from nanochat_gateway.api.schemas.base import RequestModel
from nanochat_gateway.api.schemas.requests import ChatMessage, NonEmptyStr, TokenId


class TokenizeRequest(RequestModel):
    """``POST /tokenize``: exactly one of ``prompt`` or ``messages``."""

    # Exactly one of the two is given (not null): each form says the other is absent or null.
    model_config = ConfigDict(json_schema_extra={"oneOf": [
        {"required": ["prompt"], "properties": {"prompt": {"type": "string"}, "messages": {"type": "null"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}, "prompt": {"type": "null"}}},
    ]})

    model: Annotated[NonEmptyStr | None, Field(description="Optional; when given, the served model's id.")] = None
    prompt: Annotated[str | None, Field(description="Text to encode; special token names become their ids.")] = None
    messages: Annotated[
        list[ChatMessage] | None,
        Field(min_length=1, description="A conversation, rendered exactly as /v1/chat/completions renders it."),
    ] = None
    add_special_tokens: Annotated[
        bool | None,
        Field(description="With prompt: put <|bos|> first (default true). With messages the rendering always "
                          "starts with <|bos|> and this is ignored."),
    ] = None
    return_token_strs: Annotated[bool, Field(description="Also return each token as a string.")] = False
    continue_final_message: Annotated[bool | None, Field(description="As in /v1/chat/completions.")] = None
    add_generation_prompt: Annotated[bool | None, Field(description="As in /v1/chat/completions.")] = None

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise PydanticCustomError("invalid_value", "send exactly one of 'prompt' and 'messages'")
        return self


class DetokenizeRequest(RequestModel):
    """``POST /detokenize``."""

    model: Annotated[NonEmptyStr | None, Field(description="Optional; when given, the served model's id.")] = None
    tokens: Annotated[list[TokenId], Field(description="Token ids; special tokens decode to their names.")]


class TokenizeResponse(BaseModel):
    """Answer of ``POST /tokenize``."""

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(BaseModel):
    """Answer of ``POST /detokenize``."""

    prompt: str


class TokenizerInfo(BaseModel):
    """Answer of ``GET /tokenizer_info``: what a client needs to use the tokenizer remotely, in
    the keys of a Hugging Face ``tokenizer_config.json`` (lm-evaluation-harness's remote tokenizer
    reads ``bos_token``, ``eos_token`` and ``chat_template``)."""

    tokenizer_class: str
    name: str
    vocab_size: int
    model_max_length: int
    bos_token: str
    eos_token: str
    pad_token: str | None = None
    special_tokens: dict[str, int]
    chat_template: str
