"""The model config: the packaged default, validation, and prices seeded into the store."""

from __future__ import annotations

import pytest

from shuqi.up import seed_prices
from vouchers.factory import Stores
from vouchers.models import Price
from vouchers.units import parse_price
from workers.specs import load_config, parse_config, price_of


def test_packaged_default_serves_smollm2_on_llamacpp_shared() -> None:
    config = load_config()
    assert config.up == ("smollm2-135m",)
    spec = config.get("smollm2-135m")
    assert (spec.engine, spec.model, spec.gpus, spec.owner) == ("llamacpp", "bundled:smollm2", 0, None)
    assert price_of(spec).output_per_1m == parse_price(spec.output_per_1m) > 0


def test_owner_names_a_startup_and_extra_args_are_kept() -> None:
    config = parse_config(
        """
        [[models]]
        name = "acme-llama"
        engine = "vllm"
        model = "/models/llama"
        gpus = 2
        owner = "acme"
        input_per_1m = "1.5"
        extra_args = ["--seed", 1]
        """
    )
    spec = config.get("acme-llama")
    assert (spec.owner, spec.gpus, spec.extra_args) == ("acme", 2, ("--seed", "1"))
    assert price_of(spec) == Price("acme-llama", input_per_1m=1_500_000, output_per_1m=0)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[models]]\nname = "a"\nengine = "llamacpp"\nmodel = "x"\ncolour = "red"', "unknown fields"),
        ('[[models]]\nname = "a"\nengine = "llamacpp"', "lacks 'model'"),
        ('[[models]]\nname = "a"\nengine = "llamacpp"\nmodel = "x"\ninput_per_1m = "-1"', "non-negative"),
        ('[[models]]\nname = "a"\nengine = "llamacpp"\nmodel = "x"\ngpus = -1', "gpus"),
        ('up = ["b"]\n[[models]]\nname = "a"\nengine = "llamacpp"\nmodel = "x"', "undeclared"),
        ('[[models]]\nname = "a"\nengine = "e"\nmodel = "x"\n' * 2, "twice"),
    ],
)
def test_bad_entries_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_config(text)


def test_unknown_model_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="smollm2-135m"):
        load_config().get("gpt-9")


async def test_prices_are_seeded_once_and_an_admin_price_wins(store: Stores) -> None:
    spec = load_config().get("smollm2-135m")
    assert await seed_prices(store.catalog, [spec]) == ["smollm2-135m"]
    assert await store.catalog.get_price("smollm2-135m") == price_of(spec)

    admin_price = Price("smollm2-135m", input_per_1m=7, output_per_1m=9)
    await store.catalog.set_price(admin_price)
    assert await seed_prices(store.catalog, [spec]) == []
    assert await store.catalog.get_price("smollm2-135m") == admin_price
