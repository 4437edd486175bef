"""Pure pieces of the gateway: the SSE relay counter, request checks, worst-case arithmetic, token bounds."""

from __future__ import annotations

import asyncio
from typing import cast

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import errors, metering, ratelimit, tokens, validation
from gateway.context import Gateway
from gateway.leases import Leases
from gateway.sse import StreamCounter
from gateway.validation import Endpoint
from vouchers import errors as vouchers_errors
from vouchers.clock import SystemClock
from vouchers.errors import InvalidRequest
from vouchers.factory import Stores
from vouchers.models import Price, RateDecision


def _event(payload: object) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


CONTENT = _event({"choices": [{"index": 0, "delta": {"content": "hi"}}], "usage": None})
USAGE = _event({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}})
DONE = b"data: [DONE]\n\n"


@pytest.mark.parametrize("forward_usage", [False, True])
def test_counter_relays_events_split_anywhere_and_holds_back_unasked_usage(forward_usage: bool) -> None:
    stream = CONTENT + CONTENT + USAGE + DONE
    counter = StreamCounter(forward_usage=forward_usage)
    out = b"".join(counter.feed(stream[i:i + 7]) for i in range(0, len(stream), 7)) + counter.flush()
    assert out == (CONTENT + CONTENT + (USAGE if forward_usage else b"") + DONE)
    assert counter.usage == metering.Usage(7, 2)
    assert counter.chunks_with_output == 2


@pytest.mark.parametrize("forward_usage", [False, True])
def test_counter_hides_running_usage_on_text_chunks_like_openai(forward_usage: bool) -> None:
    # vLLM with --enable-force-include-usage puts running totals on every text chunk.
    running = _event({"choices": [{"index": 0, "delta": {"content": "hi"}}],
                      "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}})
    counter = StreamCounter(forward_usage=forward_usage)
    out = counter.feed(running + USAGE + DONE)
    events = [orjson.loads(e.removeprefix(b"data: ")) for e in out.split(b"\n\n") if e and e != b"data: [DONE]"]
    assert events[0]["choices"][0]["delta"]["content"] == "hi"
    if forward_usage:
        assert events[0]["usage"] is None
        assert events[1]["usage"]["completion_tokens"] == 2
    else:
        assert "usage" not in events[0] and len(events) == 1
    assert counter.usage == metering.Usage(7, 2)


ROLE = _event({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
COMMENT = b": keep-alive\n\n"


@given(events=st.lists(st.sampled_from([CONTENT, ROLE, COMMENT, USAGE, DONE, b"\n\n"]), max_size=12),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8), forward_usage=st.booleans())
def test_counter_output_and_counts_do_not_depend_on_how_the_stream_is_cut(
    events: list[bytes], cuts: list[int], forward_usage: bool
) -> None:
    stream = b"".join(events)
    whole = StreamCounter(forward_usage=forward_usage)
    expected = whole.feed(stream) + whole.flush()
    assert expected == b"".join(e for e in events if forward_usage or e != USAGE)
    for pieces in ([stream[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(stream)], strict=True)],
                   events):  # cut anywhere, or one event at a time (how a model's stream usually arrives)
        counter = StreamCounter(forward_usage=forward_usage)
        assert b"".join(counter.feed(p) for p in pieces) + counter.flush() == expected
        assert (counter.usage, counter.chunks_with_output) == (whole.usage, events.count(CONTENT))


def test_counter_counts_without_usage_and_keeps_crlf_streams_readable() -> None:
    counter = StreamCounter(forward_usage=False)
    out = counter.feed(CONTENT.replace(b"\n", b"\r\n") + b"data: {\"choices\": [{\"text\": \"x\"}]}")
    assert out == CONTENT
    assert counter.flush() == b"data: {\"choices\": [{\"text\": \"x\"}]}\n\n"
    assert counter.usage is None and counter.chunks_with_output == 2


def test_worst_case_covers_every_choice_and_rounds_up() -> None:
    price = Price("m", input_per_1m=1_000_000, output_per_1m=3)  # 1 micro-credit per prompt token; 3 per 1M out
    assert metering.completion_budget(4, 100, 2048) == 400
    assert metering.completion_budget(1, None, 2048) == 2048
    assert metering.worst_case(10, 400, price) == 10 + 1  # 400 x 3 / 1M of a micro-credit rounds up to 1
    assert metering.worst_case(10, 400, None) == 0


def test_parse_counts_generations_and_names_bad_fields() -> None:
    body = {"model": "m", "prompt": ["a", "b"], "n": 2, "best_of": 3, "max_tokens": 5}
    parsed = validation.parse(orjson.dumps(body), Endpoint.COMPLETIONS, max_tokens_cap=100)
    assert (parsed.generations, parsed.max_tokens, parsed.stream) == (6, 5, False)
    chat = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 9,
            "max_tokens": 50, "stream": True, "stream_options": {"include_usage": True}}
    parsed = validation.parse(orjson.dumps(chat), Endpoint.CHAT, max_tokens_cap=100)
    assert (parsed.max_tokens, parsed.stream, parsed.client_wants_usage) == (9, True, True)
    for bad, param in [({"model": 3}, "model"), ({"model": "m", "messages": [{}]}, "messages[0]"),
                       ({"model": "m", "messages": [{"role": "u"}], "max_tokens": True}, "max_tokens")]:
        with pytest.raises(InvalidRequest) as info:
            validation.parse(orjson.dumps(bad), Endpoint.CHAT, max_tokens_cap=100)
        assert info.value.param == param
    with pytest.raises(InvalidRequest):
        validation.parse(b"[1, 2]", Endpoint.CHAT, max_tokens_cap=100)


def test_byte_bound_is_at_least_the_text() -> None:
    text = "ünïcødé " * 100
    raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": text}]})
    assert tokens.upper_bound(raw) >= len(text.encode())


def test_rate_limit_headers_use_openai_formats() -> None:
    decision = RateDecision(allowed=True, limit_requests=60, remaining_requests=59, limit_tokens=None,
                            remaining_tokens=None, reset_s=75.0)
    assert ratelimit.headers(decision) == {"x-ratelimit-limit-requests": "60",
                                           "x-ratelimit-remaining-requests": "59",
                                           "x-ratelimit-reset-requests": "1m15s"}
    short = RateDecision(allowed=True, limit_requests=None, remaining_requests=None, limit_tokens=10,
                         remaining_tokens=3, reset_s=0.25)
    assert ratelimit.headers(short)["x-ratelimit-reset-tokens"] == "250ms"


async def test_a_ledger_read_waits_for_earlier_charges_not_for_the_traffic_to_stop() -> None:
    gw = object.__new__(Gateway)  # only the deferred-work part is exercised
    gw.settling = set()
    gw.leases = Leases(cast(Stores, None), SystemClock(), requests=0, idle_s=1, ttl_s=1, events_flow=lambda: False)
    earlier, later = asyncio.Event(), asyncio.Event()
    done: list[str] = []

    async def charge(name: str, gate: asyncio.Event) -> None:
        await gate.wait()
        done.append(name)

    gw.defer(charge("earlier", earlier))
    read = asyncio.create_task(gw.settled())
    await asyncio.sleep(0)
    gw.defer(charge("later", later))  # arrives while the read waits
    earlier.set()
    await asyncio.wait_for(read, timeout=5)
    assert done == ["earlier"]
    drain = asyncio.create_task(gw.drain())
    await asyncio.sleep(0)
    assert not drain.done()
    later.set()
    await asyncio.wait_for(drain, timeout=5)
    assert done == ["earlier", "later"] and not gw.settling


@pytest.mark.parametrize(("error", "status", "code"), [
    (vouchers_errors.InvalidRequest("bad", param="x"), 400, "invalid_request_error"),
    (vouchers_errors.AuthenticationError("who"), 401, "invalid_api_key"),
    (vouchers_errors.NotFound("none"), 404, "not_found"),
    (errors.ModelNotFound("none", param="model"), 404, "model_not_found"),
    (vouchers_errors.Conflict("taken"), 409, "conflict"),
    (errors.PayloadTooLarge("big"), 413, "request_too_large"),
    (vouchers_errors.InsufficientQuota("poor"), 429, "insufficient_quota"),
    (errors.RateLimited("fast"), 429, "rate_limit_exceeded"),
    (errors.UpstreamError("down"), 502, "upstream_error"),
    (errors.ModelUnavailable("busy"), 503, "model_unavailable"),
    (vouchers_errors.ShuqiError("odd"), 500, "internal_error"),
])
def test_each_error_has_the_contract_status_and_openai_shape(
    error: vouchers_errors.ShuqiError, status: int, code: str
) -> None:
    response = errors.error_response(error)
    payload = orjson.loads(bytes(response.body))["error"]
    assert (response.status_code, payload["code"], payload["message"], payload["param"]) == (
        status, code, error.message, error.param)
    assert (response.headers.get("x-should-retry") == "false") == (code == "insufficient_quota")
