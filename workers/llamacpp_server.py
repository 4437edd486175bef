"""llama-cpp-python's OpenAI server, plus a usage chunk at the end of every stream.

llama-cpp-python never reports usage on streams (it ignores `stream_options`), so a metering gateway
would have to estimate the prompt, and an estimate misses what the chat template adds (SmolLM2's adds a
default system prompt). This launcher counts the tokens the model really evaluated and generated, and
ends each stream with an OpenAI-style chunk `{"choices": [], "usage": {...}}`, as vLLM does with
`--enable-force-include-usage`. Run as `python -m workers.llamacpp_server` with the server's own options.
Imports llama_cpp only when run, so the light install's other modules never need it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

_USAGE_ATTR = "_shuqi_usage"


def _counting_generate(original: Callable[..., Iterator[int]], is_eog: Callable[[Any, int], bool]) -> Any:
    def generate(self: Any, tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
        # `tokens` is the whole prompt (prefix caching only skips evaluating it); the end-of-generation
        # token is sampled but, as in llama-cpp-python's own non-stream usage, not counted.
        usage = {"prompt_tokens": len(tokens), "completion_tokens": 0}
        setattr(self, _USAGE_ATTR, usage)
        for token in original(self, tokens, *args, **kwargs):
            if not is_eog(self, token):
                usage["completion_tokens"] += 1
            yield token

    return generate


def _with_usage_chunk(original: Callable[..., Any]) -> Any:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        if not kwargs.get("stream"):
            return result
        return _append_usage(self, result)

    return call


def _append_usage(llama: Any, chunks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    setattr(llama, _USAGE_ATTR, None)
    last: dict[str, Any] | None = None
    for chunk in chunks:
        last = chunk
        yield chunk
    usage = getattr(llama, _USAGE_ATTR, None)
    if last is None or usage is None:
        return
    # max_tokens stops the loop after the last token is appended, before generate yields again; a
    # stop sequence can end it early too: the count is of tokens the model produced, as non-stream usage.
    yield {
        "id": last["id"],
        "object": last["object"],
        "created": last["created"],
        "model": last["model"],
        "choices": [],
        "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
    }


def install() -> None:
    """Patch llama_cpp.Llama so streamed chat and text completions end with a usage chunk."""
    import llama_cpp

    def is_eog(llama: Any, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(llama._model.vocab, token))

    cls = llama_cpp.Llama
    setattr(cls, "generate", _counting_generate(cls.generate, is_eog))  # noqa: B010 - mypy forbids method assignment
    setattr(cls, "create_chat_completion", _with_usage_chunk(cls.create_chat_completion))  # noqa: B010
    # The server calls Llama.__call__ for /v1/completions; patching create_completion instead would
    # also hit the chat handler, which expects every chunk to have a choice.
    setattr(cls, "__call__", _with_usage_chunk(cls.__call__))  # noqa: B010


def main() -> None:
    """Entry point: patch, then hand over to `python -m llama_cpp.server`'s main."""
    install()
    from llama_cpp.server.__main__ import main as server_main

    server_main()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    main()
