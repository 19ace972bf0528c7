"""Request bodies of the OpenAI-compatible routes (pydantic), with OpenAI's ranges.

Unknown fields are ignored, as OpenAI-compatible servers do, so newer clients keep working;
fields that change the output but are not implemented (``logprobs``, ``tools``...) are
rejected by the route with a 400 naming them rather than silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


def _non_empty(v: Any) -> Any:
    if isinstance(v, list) and not v:
        raise ValueError("the list is empty")
    return v


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")

    def unsupported(self, names: tuple[str, ...]) -> list[str]:
        """Extra fields set to something other than their off value."""
        extra = self.model_extra or {}
        return [k for k in names if extra.get(k) not in (None, False, 0, [], {})]


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)

    def as_template_message(self) -> dict[str, str]:
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": self.text()}


class StreamOptions(BaseModel):
    include_usage: bool = False


Stop = Union[str, list[str], None]


class _Sampling(_Body):
    model: str = Field(min_length=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=128)
    stop: Stop = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)  # accepted, no effect
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)  # accepted, no effect
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: Stop) -> Stop:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for legacy completions
    echo: bool = False

    _prompt = field_validator("prompt")(classmethod(lambda cls, v: _non_empty(v)))

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class ClassifyRequest(_Body):
    model: str = Field(min_length=1)
    input: Union[str, list[str]]
    text_pair: Union[str, list[str], None] = None
    threshold: float | None = Field(None, ge=0.0, le=1.0)

    _input = field_validator("input")(classmethod(lambda cls, v: _non_empty(v)))

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)

    def pairs(self) -> list[str] | None:
        if self.text_pair is None:
            return None
        return [self.text_pair] if isinstance(self.text_pair, str) else list(self.text_pair)


UNSUPPORTED_CHAT = ("logprobs", "top_logprobs", "tools", "tool_choice", "functions",
                    "response_format", "logit_bias")
UNSUPPORTED_COMPLETION = ("logprobs", "suffix", "best_of", "logit_bias")
