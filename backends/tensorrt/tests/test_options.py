"""Backend options, optimisation profiles, precision rules and model kinds: no GPU needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from unifer import UniferWarning, UnsupportedOptionError
from unifer_tensorrt._options import (
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_CONTEXTS,
    BuildPlan,
    Options,
    Profile,
    check_engine_precision,
    check_int8,
    check_precision,
    model_kind,
    parse_device,
    parse_options,
    parse_profile,
    resolve_profiles,
)

# -- model kinds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("model.onnx", "onnx"),
        ("model.ONNX", "onnx"),
        ("model.engine", "engine"),
        ("model.Engine", "engine"),
        ("model.plan", "engine"),
        ("model.PLAN", "engine"),
        ("arcface.r100.plan", "engine"),
        ("engine.onnx", "onnx"),
    ],
)
def test_model_kind_by_suffix_in_any_case(name: str, kind: str) -> None:
    assert model_kind(Path("/models") / name) == kind


# -- options ---------------------------------------------------------------------------------------


def test_defaults() -> None:
    options = parse_options({})
    assert options == Options()
    assert options.device == 0
    assert options.max_batch == DEFAULT_MAX_BATCH
    assert options.max_contexts == DEFAULT_MAX_CONTEXTS
    assert options.tf32 is False
    assert options.cache is True
    assert options.workspace_mib is None
    assert options.builder_optimization_level is None


def test_every_option_is_read() -> None:
    options = parse_options(
        {
            "device": "cuda:1",
            "max_batch": 8,
            "max_contexts": 2,
            "profiles": {"x": {"min": [1, 3], "opt": [4, 3], "max": [8, 3]}},
            "tf32": True,
            "workspace_mib": 512,
            "builder_optimization_level": 5,
            "cache": False,
        }
    )
    assert options == Options(
        device=1,
        max_batch=8,
        max_contexts=2,
        profiles={"x": Profile((1, 3), (4, 3), (8, 3))},
        tf32=True,
        workspace_mib=512,
        builder_optimization_level=5,
        cache=False,
    )


def test_numpy_integers_are_read_as_ints() -> None:
    """A count from an array or a config loader is a numpy integer; TensorRT's setters need int."""
    options = parse_options(
        {
            "device": np.int64(1),
            "max_batch": np.int32(8),
            "profiles": {"x": [[np.int64(1), 3], [np.int64(2), 3], (4, 3)]},
            "builder_optimization_level": np.int64(2),
        }
    )
    assert options.device == 1 and options.max_batch == 8
    assert options.builder_optimization_level == 2
    assert options.profiles["x"] == Profile((1, 3), (2, 3), (4, 3))
    ints = [options.device, options.max_batch, options.builder_optimization_level]
    ints += [d for shape in options.profiles["x"].to_json().values() for d in shape]
    assert all(type(i) is int for i in ints)


def test_unknown_options_warn_and_are_ignored() -> None:
    with pytest.warns(UniferWarning, match="'precison' is not understood by tensorrt"):
        options = parse_options({"precison": "fp16"})
    assert options == Options()


@pytest.mark.parametrize(
    ("value", "index"), [(0, 0), (3, 3), ("cuda:2", 2), ("gpu:1", 1), ("CUDA:0", 0), ("1", 1)]
)
def test_device_forms(value: object, index: int) -> None:
    assert parse_device(value) == index


@pytest.mark.parametrize("value", [-1, True, "cpu", "cuda:", "cuda:x", 1.0, None])
def test_bad_device_is_refused(value: object) -> None:
    with pytest.raises(UnsupportedOptionError, match="'device' must be a CUDA device index"):
        parse_device(value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"max_batch": 0}, "'max_batch' must be an integer >= 1"),
        ({"max_batch": True}, "'max_batch' must be an integer >= 1"),
        ({"max_batch": 2.0}, "'max_batch' must be an integer >= 1"),
        ({"max_contexts": 0}, "'max_contexts' must be an integer >= 1"),
        ({"workspace_mib": -5}, "'workspace_mib' must be an integer >= 1"),
        ({"tf32": "yes"}, "'tf32' must be True or False"),
        ({"cache": 1}, "'cache' must be True or False"),
        ({"builder_optimization_level": 6}, "from 0 to 5"),
        ({"builder_optimization_level": True}, "from 0 to 5"),
        ({"builder_optimization_level": 3.0}, "from 0 to 5"),  # accepted, then dropped, before
        ({"profiles": [1, 2, 3]}, "'profiles' must map input names"),
    ],
)
def test_bad_values_are_refused(extra: dict[str, object], message: str) -> None:
    with pytest.raises(UnsupportedOptionError, match=message):
        parse_options(extra)


# -- profiles --------------------------------------------------------------------------------------


def test_profile_forms() -> None:
    as_dict = parse_profile("x", {"min": [1, 3], "opt": [2, 3], "max": [4, 3]})
    as_list = parse_profile("x", [[1, 3], [2, 3], (4, 3)])
    assert as_dict == as_list == Profile((1, 3), (2, 3), (4, 3))
    assert as_dict.to_json() == {"min": [1, 3], "opt": [2, 3], "max": [4, 3]}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"min": [1], "max": [2]}, "missing \\['opt'\\]"),
        ({"min": [1], "opt": [1], "max": [2], "best": [1]}, "unknown \\['best'\\]"),
        ([[1], [2]], "must be \\{'min': shape"),
        ("1x3", "must be \\{'min': shape"),
        ({"min": [1, 3], "opt": [2], "max": [4, 3]}, "same rank"),
        ({"min": [4, 3], "opt": [2, 3], "max": [8, 3]}, "min <= opt <= max"),
        ({"min": [1, 3], "opt": [9, 3], "max": [8, 3]}, "min <= opt <= max"),
        ({"min": [1, -1], "opt": [1, 3], "max": [1, 3]}, "integers >= 0"),
        ({"min": [1, 3.0], "opt": [1, 3], "max": [1, 3]}, "integers >= 0"),
        ({"min": "13", "opt": [1, 3], "max": [1, 3]}, "list of integers"),
    ],
)
def test_bad_profiles_are_refused(value: object, message: str) -> None:
    with pytest.raises(UnsupportedOptionError, match=message) as info:
        parse_options({"profiles": {"x": value}})
    assert "input 'x'" in str(info.value)


def test_a_dynamic_batch_gets_one_to_max_batch() -> None:
    profiles = resolve_profiles([("x", (-1, 3, 112, 112))], Options(max_batch=16))
    assert profiles == {"x": Profile((1, 3, 112, 112), (1, 3, 112, 112), (16, 3, 112, 112))}


def test_static_inputs_need_no_profile() -> None:
    assert resolve_profiles([("x", (1, 3, 112, 112)), ("k", (2,))], Options()) == {}


def test_other_dynamic_dimensions_need_a_profile() -> None:
    with pytest.raises(UnsupportedOptionError) as info:
        resolve_profiles([("image", (-1, 3, -1, -1))], Options())
    message = str(info.value)
    assert "'image' [?, 3, ?, ?]" in message
    assert "axes 2, 3 besides the batch" in message
    assert "'profiles': {'image': {'min': [...], 'opt': [...], 'max': [...]}}}}" in message


def test_a_given_profile_is_used() -> None:
    given = Profile((1, 3, 64, 64), (1, 3, 224, 224), (4, 3, 512, 512))
    options = Options(profiles={"image": given})
    assert resolve_profiles([("image", (-1, 3, -1, -1))], options) == {"image": given}


def test_a_given_profile_must_fit_the_model() -> None:
    with pytest.raises(UnsupportedOptionError, match="the input has rank 4 .* profile rank 3"):
        resolve_profiles(
            [("image", (-1, 3, -1, -1))],
            Options(profiles={"image": Profile((1, 3, 8), (1, 3, 8), (1, 3, 8))}),
        )
    with pytest.raises(UnsupportedOptionError, match="dimension 1 is fixed at 3"):
        resolve_profiles(
            [("image", (-1, 3, -1, -1))],
            Options(profiles={"image": Profile((1, 1, 8, 8), (1, 3, 8, 8), (1, 3, 8, 8))}),
        )


def test_a_profile_for_a_static_input_must_equal_its_shape() -> None:
    same = Profile((1, 8), (1, 8), (1, 8))
    assert resolve_profiles([("x", (1, 8))], Options(profiles={"x": same})) == {}
    with pytest.raises(UnsupportedOptionError, match="dimension 0 is fixed at 1"):
        resolve_profiles([("x", (1, 8))], Options(profiles={"x": Profile((1, 8), (2, 8), (4, 8))}))


def test_a_profile_for_an_unknown_input_is_refused() -> None:
    with pytest.raises(UnsupportedOptionError, match="names 'imgae', which the model does not"):
        resolve_profiles(
            [("image", (-1, 3))],
            Options(profiles={"imgae": Profile((1, 3), (1, 3), (2, 3))}),
        )


def test_max_batch_is_part_of_the_build_key_and_max_contexts_is_not() -> None:
    assert Options(max_batch=8).build_key() != Options().build_key()
    assert Options(tf32=True).build_key() != Options().build_key()
    assert Options(max_contexts=1, device=1, cache=False).build_key() == Options().build_key()


# -- precision -------------------------------------------------------------------------------------

TRT10 = "10.13.3.9"
TRT11 = "11.4.0.106"
HOPPER = (9, 0)
TURING = (7, 5)


def plan(precision: str, capability: tuple[int, int], version: str) -> BuildPlan:
    """What the session asks: TensorRT 10 still has weak typing (BuilderFlag.FP16), 11 not."""
    return check_precision(
        precision,
        tensorrt_version=version,
        weak_typing=version.startswith("10."),
        compute_capability=capability,
    )


def test_fp32_is_strongly_typed_on_every_version() -> None:
    for version in (TRT10, TRT11):
        assert plan("fp32", HOPPER, version) == BuildPlan(strongly_typed=True)


def test_int8_is_planned_strongly_typed() -> None:
    assert plan("int8", TURING, TRT11) == BuildPlan(strongly_typed=True)


def test_tensorrt_10_uses_builder_flags_for_fp16_and_bf16() -> None:
    assert plan("fp16", TURING, TRT10) == BuildPlan(strongly_typed=False, flags=("FP16",))
    assert plan("bf16", HOPPER, TRT10) == BuildPlan(strongly_typed=False, flags=("BF16",))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_tensorrt_11_refuses_reduced_precision_flags(precision: str) -> None:
    with pytest.raises(UnsupportedOptionError) as info:
        plan(precision, HOPPER, TRT11)
    message = str(info.value)
    assert f"precision={precision!r}" in message
    assert "TensorRT 11.4.0.106 builds strongly typed networks only" in message
    assert "load it with precision='fp32', or use TensorRT 10" in message
    assert "supported here: fp32, int8" in message


def test_bf16_needs_ampere() -> None:
    with pytest.raises(UnsupportedOptionError, match="compute capability 8.0 .* this one is 7.5"):
        plan("bf16", TURING, TRT10)
    with pytest.raises(UnsupportedOptionError, match="supported here: fp32, int8, fp16\\)"):
        plan("bf16", TURING, TRT10)


def test_int8_needs_an_explicitly_quantized_model() -> None:
    check_int8("int8", quantize_layers=12)
    check_int8("fp32", quantize_layers=0)
    with pytest.raises(UnsupportedOptionError) as info:
        check_int8("int8", quantize_layers=0)
    message = str(info.value)
    assert "no QuantizeLinear/DequantizeLinear nodes" in message
    assert "TensorRT 11 removed it" in message
    assert "QuantFormat.QDQ" in message


def test_a_serialized_engine_runs_as_built() -> None:
    check_engine_precision("fp32")
    for precision in ("fp16", "bf16", "int8"):
        with pytest.raises(UnsupportedOptionError, match="runs it as built"):
            check_engine_precision(precision)
