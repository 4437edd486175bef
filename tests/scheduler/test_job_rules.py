"""What a job submission must satisfy and what it holds (pure rules the gateway applies)."""

from __future__ import annotations

import pytest

from vouchers.errors import InvalidRequest
from vouchers.job_rules import JobRequest, NodeInfo, hold_ms, parse_weights, validate

NODES = [NodeInfo("n1", "a100", 8), NodeInfo("n2", "t4", 2), NodeInfo("n3", "h100", 16, alive=False)]
WEIGHTS = parse_weights("a100=2,t4=0.5")


def _check(**kw: object) -> int:
    request = JobRequest(**{"entrypoint": "python x.py", "gpus": 1, "max_runtime_s": 60, **kw})  # type: ignore[arg-type]
    return validate(request, NODES, max_runtime_s=3600, weights=WEIGHTS)


def test_weights_parse_with_the_default_type_weighing_one() -> None:
    assert WEIGHTS == {"default": 1000, "a100": 2000, "t4": 500}
    assert parse_weights("default=0.5, a100=2.25") == {"default": 500, "a100": 2250}
    for bad in ("a100", "a100=x", "a100=0", "=2", "a100=1.0001", "a100=-1", "a100=0.0005", "a100=NaN",
                "a100=Infinity"):
        with pytest.raises(ValueError):
            parse_weights(bad)


def test_hold_is_the_worst_case_at_the_heaviest_type_that_could_take_it() -> None:
    assert _check(gpu_type="t4") == 500
    assert _check() == 2000  # may land on an a100
    assert _check(gpus=4) == 2000
    assert hold_ms(2, 3600, 2000) == 2 * 3600 * 1000 * 2


@pytest.mark.parametrize(("fields", "param"), [
    ({"gpus": 0}, "gpus"),
    ({"gpus": -1}, "gpus"),
    ({"gpus": 9}, "gpus"),  # more than any live node has (the 16-GPU node is dead)
    ({"gpus": 4, "gpu_type": "t4"}, "gpus"),
    ({"gpu_type": "v100"}, "gpu_type"),
    ({"max_runtime_s": 0}, "max_runtime_s"),
    ({"max_runtime_s": 3601}, "max_runtime_s"),
    ({"entrypoint": "  "}, "entrypoint"),
    ({"env": {"CUDA_VISIBLE_DEVICES": "0,1,2"}}, "env"),
    ({"env": {"RAY_ADDRESS": "x"}}, "env"),
    ({"env": {"1BAD": "x"}}, "env"),
])
def test_bad_fields_are_400_naming_the_field(fields: dict[str, object], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        _check(**fields)
    assert err.value.param == param
