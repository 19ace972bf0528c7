"""Request bodies of the OpenAI-compatible routes (pydantic), with OpenAI's ranges.

Unknown fields are ignored, as OpenAI-compatible servers do, so newer clients keep working;
fields that change the output but are not implemented (``logprobs``, ``functions``...) are
rejected by the route with a 400 naming them rather than silently ignored.

Every field is bounded, so that no body can reach the model, the decoder or the database
with a value they would fail on (a 500) rather than refuse (a 422 naming the field): numbers
have ranges (``seed`` is a signed 64-bit integer, as in OpenAI's schema, which is also what
``torch.Generator.manual_seed`` takes), strings and lists have lengths, and text may hold
neither a NUL character nor an unpaired UTF-16 surrogate (JSON's ``"\\ud800"`` escape), which
tokenizers, UTF-8 encoders and PostgreSQL refuse. The server's own limits (``max_n``,
``max_tokens_limit``, the context length) are checked by the routes, below these bounds.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

# The bounds, in one place (docs/serve.md lists them; the jobs and feedback routes share them).
SEED_RANGE = (-(2 ** 63), 2 ** 63 - 1)  # OpenAI's int64; torch.Generator takes all of them
MAX_INT32 = 2 ** 31 - 1  # token counts and indexes (an SQL INTEGER)
MAX_NAME = 200  # a model name, a hub id (≤ 96 on the hub), a user id (their SQL columns fit)
MAX_TEXT = 1 << 20  # characters in one message, prompt, input or correction
MAX_MESSAGES = 2048  # messages of one chat request
MAX_PARTS = 256  # content parts of one message
MAX_PROMPTS = 128  # prompts of one completion request (each gets n choices)
MAX_INPUTS = 2048  # texts of one classify request
MAX_STOP = 4  # stop sequences (OpenAI's limit)
MAX_STOP_CHARS = 256  # characters of one stop sequence (matched at every token)
MAX_TOOLS = 128  # functions of one request (OpenAI's limit)
MAX_SWITCHES = 16  # chat_template_kwargs of one request
MAX_LOGIT_BIAS = 300  # entries of logit_bias (OpenAI's limit; the field is unsupported)
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"  # ids this server hands out (file-, ftjob-, chatcmpl-)


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored or tokenized as text, or None when it can."""
    if "\x00" in value:
        return (f"the text holds a NUL character (U+0000) at position {value.index(chr(0))}; "
                "remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"the text holds an unpaired UTF-16 surrogate (U+{ord(value[exc.start]):04X}) "
                f"at position {exc.start}, which is not a character; send valid Unicode (a "
                "\\uD83D-style escape must be followed by its low surrogate)")
    return None


def _valid_text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME),
                 AfterValidator(_valid_text)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT), AfterValidator(_valid_text)]
StopText = Annotated[str, StringConstraints(max_length=MAX_STOP_CHARS),
                     AfterValidator(_valid_text)]
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
TokenId = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")]
Bias = Annotated[float, Field(ge=-100.0, le=100.0)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")

    def unsupported(self, names: tuple[str, ...]) -> list[str]:
        """Fields of ``names`` (declared or extra) set to something other than their off value."""
        extra = self.model_extra or {}
        return [k for k in names
                if (getattr(self, k) if k in type(self).model_fields else extra.get(k))
                not in (None, False, 0, [], {})]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class FunctionCall(BaseModel):
    name: Name
    arguments: Text = "{}"  # a JSON string, as OpenAI sends it


class ToolCall(BaseModel):
    id: Union[Name, None] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Name
    description: Union[Text, None] = None
    parameters: Union[dict, None] = None


class ToolSpec(BaseModel):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(BaseModel):
    name: Name


class NamedToolChoice(BaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[Text, Annotated[list[TextPart], Field(max_length=MAX_PARTS)], None] = None
    name: Union[Name, None] = None
    tool_calls: Union[Annotated[list[ToolCall], Field(max_length=MAX_TOOLS)], None] = None
    tool_call_id: Union[Name, None] = None
    reasoning_content: Union[Text, None] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)

    def as_template_message(self) -> dict[str, Any]:
        """The message in the data shape the training renderer reads (tool calls, tool
        results and reasoning included)."""
        role = "system" if self.role == "developer" else self.role
        msg: dict[str, Any] = {"role": role, "content": self.text()}
        if self.tool_calls:
            msg["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if role == "tool":
            msg.update({k: v for k, v in (("tool_call_id", self.tool_call_id),
                                          ("name", self.name)) if v is not None})
        if self.reasoning_content:
            msg["reasoning"] = self.reasoning_content
        return msg


class StreamOptions(BaseModel):
    include_usage: bool = False


Stop = Union[StopText, Annotated[list[StopText], Field(max_length=MAX_STOP)], None]


class _Sampling(_Body):
    model: Name
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=128)
    stop: Stop = None
    seed: int | None = Field(None, ge=SEED_RANGE[0], le=SEED_RANGE[1])
    # vLLM's extension (llama-server has it too): generate max_tokens tokens, past the
    # end-of-sequence token; for load tests whose replies must all have one length
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)  # accepted, no effect
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)  # accepted, no effect
    logit_bias: dict[TokenId, Bias] | None = Field(None, max_length=MAX_LOGIT_BIAS)  # refused
    user: Union[Name, None] = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


MaxTokens = Annotated[int, Field(ge=1, le=MAX_INT32)]


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    tools: Union[Annotated[list[ToolSpec], Field(max_length=MAX_TOOLS)], None] = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool | None = None
    # vLLM's extension: the chat template's switches (enable_thinking...) for this request;
    # the run's model.chat_template_kwargs are the defaults baked into its template
    chat_template_kwargs: Union[Annotated[dict[Name, Union[bool, int, float, Name]],
                                          Field(max_length=MAX_SWITCHES)], None] = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Sampling):
    prompt: Union[Text, Annotated[list[Text], Field(min_length=1, max_length=MAX_PROMPTS)]]
    max_tokens: MaxTokens | None = 16  # OpenAI's default for legacy completions
    echo: bool = False

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


Inputs = Union[Text, Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]]


class ClassifyRequest(_Body):
    model: Name
    input: Inputs
    text_pair: Inputs | None = None
    threshold: float | None = Field(None, ge=0.0, le=1.0)

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)

    def pairs(self) -> list[str] | None:
        if self.text_pair is None:
            return None
        return [self.text_pair] if isinstance(self.text_pair, str) else list(self.text_pair)


UNSUPPORTED_CHAT = ("logprobs", "top_logprobs", "functions", "function_call",
                    "response_format", "logit_bias")
UNSUPPORTED_COMPLETION = ("logprobs", "suffix", "best_of", "logit_bias")
