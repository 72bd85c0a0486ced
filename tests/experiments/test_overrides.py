"""--set overrides of nested frozen configs, their JSON form, and config diffs: every parsing rule, every
refusal's message, and the __post_init__ path, on small configs defined here (three levels, an optional
sub-config, Literal, tuples)."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from experiments.overrides import (
    OverrideError,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    diff_configs,
)


@dataclass(frozen=True)
class Leaf:
    lr: float = 1e-3
    steps: int = 10
    name: str = "leaf"

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class Mid:
    leaf: Leaf = field(default_factory=Leaf)
    dims: tuple[int, ...] = (1, 2)
    mode: Literal["greedy", "sample"] = "sample"


@dataclass(frozen=True)
class Eval:
    every: int = 5
    splits: tuple[str, ...] = ("dev",)


@dataclass(frozen=True)
class Root:
    mid: Mid = field(default_factory=Mid)
    eval: Eval | None = None
    seed: int = 0
    use_cache: bool = True
    checkpoint: str | None = None
    scales: tuple[float, ...] = (0.5,)
    width: Literal[1, 2, 4] = 1
    pair: tuple[int, str] = (0, "a")

    def __post_init__(self) -> None:
        # A cross-field check at the top level: it must run after a nested replace too.
        if self.eval is not None and self.eval.every > 100 and self.seed == 0:
            raise ValueError("eval.every > 100 needs an explicit seed")


def _error(cfg: object, *assignments: str) -> str:
    with pytest.raises(OverrideError) as info:
        apply_overrides(cfg, assignments)
    message = str(info.value)
    assert "\n" not in message  # one clear line
    return message


# --- values, by annotation ------------------------------------------------------------------------------


def test_three_levels_deep_and_types_of_leaves():
    root = Root()
    cfg = apply_overrides(root, ["mid.leaf.lr=1e-5", "mid.leaf.steps=200", "mid.leaf.name=big run", "seed=7"])
    assert cfg.mid.leaf == Leaf(lr=1e-5, steps=200, name="big run")
    assert isinstance(cfg.mid.leaf.lr, float) and cfg.seed == 7
    assert cfg.mid.dims == (1, 2) and cfg.eval is None  # untouched fields keep their values
    assert root == Root() and cfg is not root  # the input is not mutated; a new value comes back


def test_float_accepts_int_and_exponent_and_int_refuses_floats():
    assert apply_overrides(Root(), ["mid.leaf.lr=3"]).mid.leaf.lr == 3.0
    assert type(apply_overrides(Root(), ["mid.leaf.lr=3"]).mid.leaf.lr) is float
    assert apply_overrides(Root(), ["mid.leaf.lr=2.5E-4"]).mid.leaf.lr == 2.5e-4
    for bad in ("1.5", "1e3", "ten", "true", ""):
        message = _error(Root(), f"mid.leaf.steps={bad}")
        assert f"mid.leaf.steps expects int, got {bad!r}" in message


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("True", True), ("YES", True), ("1", True),
     ("false", False), ("FALSE", False), ("no", False), ("0", False)],
)
def test_bool_spellings(text: str, value: bool):
    assert apply_overrides(Root(use_cache=not value), [f"use_cache={text}"]).use_cache is value


def test_bool_refuses_other_words():
    assert "use_cache expects bool, got 'maybe'" in _error(Root(), "use_cache=maybe")
    assert "expects bool" in _error(Root(), "use_cache=2")


def test_optional_str_none_null_and_a_json_string():
    cfg = apply_overrides(Root(), ["checkpoint=/ckpt/step_100"])
    assert cfg.checkpoint == "/ckpt/step_100"
    assert apply_overrides(cfg, ["checkpoint=none"]).checkpoint is None
    assert apply_overrides(cfg, ["checkpoint=NULL"]).checkpoint is None
    # The JSON spelling says a string that would otherwise read as None.
    assert apply_overrides(cfg, ['checkpoint="none"']).checkpoint == "none"
    # A plain str field takes "none" as written: it cannot hold None.
    assert apply_overrides(Root(), ["mid.leaf.name=none"]).mid.leaf.name == "none"
    # '=' after the first one belongs to the value.
    assert apply_overrides(Root(), ["mid.leaf.name=a=b"]).mid.leaf.name == "a=b"


def test_literal_values_str_and_int():
    assert apply_overrides(Root(), ["mid.mode=greedy"]).mid.mode == "greedy"
    assert apply_overrides(Root(), ['mid.mode="greedy"']).mid.mode == "greedy"
    assert apply_overrides(Root(), ["width=4"]).width == 4
    message = _error(Root(), "mid.mode=beam")
    assert message == "'mid.mode=beam': mid.mode expects one of \"greedy\", \"sample\", got 'beam'"
    assert 'width expects one of 1, 2, 4, got \'3\'' in _error(Root(), "width=3")
    assert "expects one of" in _error(Root(), "width=true")  # True == 1, but it is not the literal 1


def test_tuples_comma_separated_or_json():
    assert apply_overrides(Root(), ["mid.dims=4,8,16"]).mid.dims == (4, 8, 16)
    assert apply_overrides(Root(), ["mid.dims= 4, 8 "]).mid.dims == (4, 8)
    assert apply_overrides(Root(), ["mid.dims=[3, 5]"]).mid.dims == (3, 5)
    assert apply_overrides(Root(), ["mid.dims=7"]).mid.dims == (7,)
    assert apply_overrides(Root(), ["mid.dims="]).mid.dims == ()
    assert apply_overrides(Root(), ["mid.dims=[]"]).mid.dims == ()
    assert apply_overrides(Root(), ["scales=1,2.5,1e-2"]).scales == (1.0, 2.5, 0.01)
    assert all(type(s) is float for s in apply_overrides(Root(), ["scales=[1, 2]"]).scales)
    cfg = apply_overrides(Root(eval=Eval()), ["eval.splits=dev,test", "pair=3,b"])
    assert cfg.eval is not None and cfg.eval.splits == ("dev", "test") and cfg.pair == (3, "b")
    # A JSON list is how to put a comma inside an element.
    assert apply_overrides(Root(eval=Eval()), ['eval.splits=["a,b", "c"]']).eval.splits == ("a,b", "c")  # type: ignore[union-attr]
    assert "mid.dims expects tuple[int, ...], got '1,x'" in _error(Root(), "mid.dims=1,x")
    assert "expects tuple[int, ...]" in _error(Root(), 'mid.dims=["1"]')  # JSON strings are not ints
    assert "pair expects tuple[int, str], got '1,b,c'" in _error(Root(), "pair=1,b,c")


def test_json_literal_accepted_for_any_type():
    cfg = apply_overrides(Root(), ["seed=12", "mid.leaf.lr=0.5", "use_cache=false", 'mid.leaf.name="x y"'])
    assert (cfg.seed, cfg.mid.leaf.lr, cfg.use_cache, cfg.mid.leaf.name) == (12, 0.5, False, "x y")
    assert apply_overrides(Root(), ["checkpoint=null"]).checkpoint is None


def test_later_assignment_wins():
    assert apply_overrides(Root(), ["seed=1", "seed=2"]).seed == 2


# --- optional sub-configs -------------------------------------------------------------------------------


def test_sub_field_of_a_none_config_is_refused():
    message = _error(Root(), "eval.every=3")
    assert message.startswith("'eval.every=3': eval is None (Eval | None), so it has no field 'every' to set")


def test_optional_config_set_and_cleared():
    cfg = apply_overrides(Root(eval=Eval()), ["eval.every=20", "eval.splits=test"])
    assert cfg.eval == Eval(every=20, splits=("test",))
    assert apply_overrides(cfg, ["eval=none"]).eval is None


# --- refusals -------------------------------------------------------------------------------------------


def test_unknown_field_names_the_known_ones_and_the_closest():
    message = _error(Root(), "mid.leaf.stpes=3")
    assert message == (
        "'mid.leaf.stpes=3': unknown field 'stpes' in mid.leaf; did you mean 'steps'? (known: lr, steps, name)"
    )
    message = _error(Root(), "sede=3")
    assert "unknown field 'sede' in Root; did you mean 'seed'?" in message
    assert "(known: mid, eval, seed, use_cache, checkpoint, scales, width, pair)" in message
    assert "did you mean" not in _error(Root(), "zzzzzz=1")


def test_missing_equals_and_empty_path():
    assert _error(Root(), "seed") == "'seed': expected path.to.field=value (no '=')"
    assert "empty field name" in _error(Root(), "mid..leaf=1")
    assert "empty field name" in _error(Root(), "=1")


def test_whole_config_field_is_refused_with_its_sub_fields():
    message = _error(Root(), "mid.leaf=3")
    assert "mid.leaf is a Leaf config, not a value" in message
    assert "set its fields instead: mid.leaf.lr, mid.leaf.steps, mid.leaf.name" in message
    message = _error(Root(), 'mid={"dims": [1]}')
    assert "set its fields instead: mid.leaf, mid.dims, mid.mode" in message
    message = _error(Root(eval=Eval()), "eval=1")
    assert "eval is a Eval config, not a value (or none); set its fields instead: eval.every, eval.splits" in message


def test_path_through_a_leaf_is_refused():
    assert "seed is int, not a config with fields (no 'x')" in _error(Root(), "seed.x=1")


def test_post_init_error_is_surfaced_with_the_path():
    message = _error(Root(), "mid.leaf.lr=-1")
    assert message == "'mid.leaf.lr=-1': mid.leaf rejected it: lr must be > 0, got -1.0"
    # A check on an outer level runs again after an inner replace.
    message = _error(Root(eval=Eval()), "eval.every=500")
    assert message == "'eval.every=500': Root rejected it: eval.every > 100 needs an explicit seed"
    cfg = apply_overrides(Root(eval=Eval()), ["seed=1", "eval.every=500"])  # in order: then it is valid
    assert cfg.eval is not None and cfg.eval.every == 500


def test_override_error_is_a_value_error_and_bad_arguments_are_type_errors():
    with pytest.raises(ValueError, match="unknown field"):
        apply_overrides(Root(), ["nope=1"])
    with pytest.raises(TypeError, match="sequence of"):
        apply_overrides(Root(), "seed=1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="dataclass instance"):
        apply_overrides(Root, ["seed=1"])


# --- JSON form ------------------------------------------------------------------------------------------


def _full() -> Root:
    return apply_overrides(
        Root(eval=Eval()),
        ["mid.leaf.lr=2e-5", "mid.dims=8,8", "mid.mode=greedy", "eval.splits=a,b", "seed=3",
         "use_cache=no", "checkpoint=/c", "scales=0.1,0.2", "width=2", "pair=5,z"],
    )


def test_config_to_dict_is_json_ready_and_round_trips():
    cfg = _full()
    data = config_to_dict(cfg)
    assert data["mid"] == {"leaf": {"lr": 2e-5, "steps": 10, "name": "leaf"}, "dims": [8, 8], "mode": "greedy"}
    assert data["eval"] == {"every": 5, "splits": ["a", "b"]} and data["pair"] == [5, "z"]
    text = json.dumps(data)  # plain JSON, no custom encoder
    again = config_from_dict(Root, json.loads(text))
    assert again == cfg and isinstance(again.mid.dims, tuple)
    assert config_from_dict(Root, config_to_dict(Root())) == Root()  # None sub-config too
    assert diff_configs(again, cfg) == []


def test_config_from_dict_refuses_unknown_and_missing_keys():
    data = config_to_dict(Root())
    data["mid"]["leaf"]["stesp"] = 1
    with pytest.raises(OverrideError, match=re.escape("unknown field 'stesp' in mid.leaf; did you mean 'steps'?")):
        config_from_dict(Root, data)
    data = config_to_dict(Root())
    data["sead"] = 1
    with pytest.raises(OverrideError, match=re.escape("unknown field 'sead' in Root; did you mean 'seed'?")):
        config_from_dict(Root, data)
    data = config_to_dict(Root())
    del data["mid"]["mode"]
    with pytest.raises(OverrideError, match=re.escape("mid: missing fields mode of Mid")) as err:
        config_from_dict(Root, data)
    # a file from before the field existed: the message says what to add for today's default
    default = json.dumps(config_to_dict(Root())["mid"]["mode"])
    assert f'add "mode": {default}' in str(err.value)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("seed",), "3", "seed expects int, got \"3\""),
        (("seed",), True, "seed expects int, got true"),
        (("use_cache",), 1, "use_cache expects bool, got 1"),
        (("mid", "leaf", "lr"), "1e-3", "mid.leaf.lr expects float, got \"1e-3\""),
        (("mid", "mode"), "beam", "mid.mode expects one of \"greedy\", \"sample\", got \"beam\""),
        (("mid", "dims"), [1, "2"], "mid.dims expects tuple[int, ...], got [1, \"2\"]"),
        (("pair",), [1], "pair expects tuple[int, str], got [1]"),
        (("mid",), 3, "mid expects Mid, got 3"),
        (("eval",), [], "eval expects Eval | None, got []"),
    ],
)
def test_config_from_dict_checks_types(path: tuple[str, ...], value: object, expected: str):
    data = config_to_dict(Root())
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(OverrideError) as info:
        config_from_dict(Root, data)
    assert str(info.value) == expected


def test_config_from_dict_runs_post_init():
    data = config_to_dict(Root())
    data["mid"]["leaf"]["lr"] = 0
    with pytest.raises(OverrideError, match=re.escape("mid.leaf rejected it: lr must be > 0, got 0.0")):
        config_from_dict(Root, data)
    data = config_to_dict(Root(eval=Eval()))
    data["eval"]["every"] = 101
    with pytest.raises(OverrideError, match=re.escape("Root rejected it: eval.every > 100 needs an explicit seed")):
        config_from_dict(Root, data)


# --- diffs ----------------------------------------------------------------------------------------------


def test_diff_configs_lists_each_differing_leaf():
    a = Root()
    b = apply_overrides(a, ["mid.leaf.lr=0.5", "mid.dims=3", "checkpoint=/x", "use_cache=false"])
    assert diff_configs(a, b) == [
        "mid.leaf.lr: 0.001 -> 0.5",
        "mid.dims: [1, 2] -> [3]",
        "use_cache: true -> false",
        'checkpoint: null -> "/x"',
    ]
    assert diff_configs(a, a) == []
    c = dataclasses.replace(a, eval=Eval(every=7))
    assert diff_configs(a, c) == ['eval: null -> {"every": 7, "splits": ["dev"]}']
    assert diff_configs(c, apply_overrides(c, ["eval.every=8"])) == ["eval.every: 7 -> 8"]
    with pytest.raises(TypeError):
        diff_configs(a, a.mid)
