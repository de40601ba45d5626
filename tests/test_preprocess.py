"""Tests for unifer._preprocess: the Preprocess spec, its one formula, resizing and sidecars.

No inference runtime is needed. OpenCV and Pillow are both installed in the dev environment; the
Pillow path and the "neither installed" error are reached by making ``import cv2`` / ``import PIL``
fail through ``sys.modules``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from unifer import UniferWarning
from unifer._errors import PreprocessError
from unifer._preprocess import LETTERBOX_FILL, Preprocess, load_sidecar, sidecar_path
from unifer.backend import TensorSpec

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(height: int, width: int, rgb: tuple[int, int, int]) -> np.ndarray:
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[...] = rgb
    return image


def random_image(height: int = 16, width: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def raw(**kwargs: object) -> Preprocess:
    """A spec whose output is the resized uint8 pixels in NHWC, so tests can read pixels back."""
    return Preprocess(layout="nhwc", dtype="uint8", **kwargs)  # type: ignore[arg-type]


# -- the formula -----------------------------------------------------------------------------------


def test_arcface_numbers_are_x_minus_127_5_over_127_5() -> None:
    image = np.zeros((112, 112, 3), dtype=np.uint8)
    image[5, 7] = (0, 128, 255)
    image[100, 3] = (1, 127, 254)

    out = Preprocess.arcface()(image)

    assert out.shape == (1, 3, 112, 112)
    assert out.dtype == np.float32
    for row, col in [(5, 7), (100, 3), (0, 0)]:
        expected = (image[row, col].astype(np.float64) - 127.5) / 127.5
        np.testing.assert_allclose(out[0, :, row, col], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out[0, :, 5, 7], [-1.0, 0.5 / 127.5, 1.0], rtol=0, atol=1e-6)


def test_per_channel_mean_and_std_apply_in_channel_order() -> None:
    pre = Preprocess(mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0))
    image = solid(2, 2, (50, 60, 80))

    out = pre(image)

    np.testing.assert_allclose(out[0, :, 0, 0], [20.0, 10.0, 10.0], rtol=1e-6)


def test_imagenet_preset() -> None:
    pre = Preprocess.imagenet()
    assert pre.size == (224, 224)
    assert pre.resize == "center_crop"
    assert pre.mean == (123.675, 116.28, 103.53)
    assert pre.std == (58.395, 57.12, 57.375)
    assert pre.layout == "nchw"
    assert pre.dtype == "float32"
    assert Preprocess.imagenet(256).size == (256, 256)

    out = pre(solid(224, 224, (123, 116, 103)))
    np.testing.assert_allclose(
        out[0, :, 0, 0],
        [(123 - 123.675) / 58.395, (116 - 116.28) / 57.12, (103 - 103.53) / 57.375],
        rtol=0,
        atol=1e-6,
    )


def test_bgr_input_is_swapped_to_rgb() -> None:
    bgr = solid(4, 4, (10, 20, 30))  # B=10, G=20, R=30

    out = Preprocess(input_color="bgr", color="rgb", layout="nhwc")(bgr)

    np.testing.assert_array_equal(out[0, 0, 0], [30.0, 20.0, 10.0])


def test_same_colour_order_is_not_swapped() -> None:
    image = solid(4, 4, (10, 20, 30))
    for order in ("rgb", "bgr"):
        out = Preprocess(input_color=order, color=order, layout="nhwc")(image)
        np.testing.assert_array_equal(out[0, 0, 0], [10.0, 20.0, 30.0])


def test_rgb_input_to_bgr_model_applies_mean_in_model_order() -> None:
    pre = Preprocess(input_color="rgb", color="bgr", mean=(1.0, 2.0, 3.0), layout="nhwc")

    out = pre(solid(1, 1, (100, 50, 10)))

    np.testing.assert_array_equal(out[0, 0, 0], [10.0 - 1.0, 50.0 - 2.0, 100.0 - 3.0])


def test_nhwc_and_nchw_hold_the_same_values_transposed() -> None:
    image = random_image(6, 9)
    nchw = Preprocess(mean=(5.0, 6.0, 7.0), std=(2.0, 3.0, 4.0))(image)
    nhwc = Preprocess(mean=(5.0, 6.0, 7.0), std=(2.0, 3.0, 4.0), layout="nhwc")(image)

    assert nchw.shape == (1, 3, 6, 9)
    assert nhwc.shape == (1, 6, 9, 3)
    np.testing.assert_array_equal(nchw, nhwc.transpose(0, 3, 1, 2))


def test_batch_input_matches_images_one_by_one() -> None:
    pre = Preprocess(size=(8, 8), mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0), input_color="bgr")
    images = [random_image(16, 12, seed=i) for i in range(3)]

    batched = pre(np.stack(images))

    assert batched.shape == (3, 3, 8, 8)
    for i, image in enumerate(images):
        np.testing.assert_array_equal(batched[i : i + 1], pre(image))


@pytest.mark.parametrize(
    ("dtype", "np_dtype"),
    [("float32", np.float32), ("float16", np.float16), ("uint8", np.uint8)],
)
def test_output_dtype(dtype: str, np_dtype: type) -> None:
    image = random_image()
    pre = Preprocess(dtype=dtype, layout="nhwc")  # type: ignore[arg-type]

    out = pre(image)

    assert out.dtype == np_dtype
    np.testing.assert_array_equal(out[0].astype(np.float32), image.astype(np.float32))


def test_float16_is_rounded_from_float32() -> None:
    image = random_image()
    half = Preprocess(mean=(127.5,) * 3, std=(127.5,) * 3, dtype="float16")
    full = dataclasses.replace(half, dtype="float32")

    np.testing.assert_array_equal(half(image), full(image).astype(np.float16))


# -- input checks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "fragments"),
    [
        (np.zeros((4, 4, 3), dtype=np.float32), ["uint8", "float32", "(img * 255).round()"]),
        (np.zeros((4, 4, 3), dtype=np.uint16), ["uint16", "(img >> 8).astype(np.uint8)"]),
        (np.zeros((4, 4, 1), dtype=np.uint8), ["(4, 4, 1)", "np.repeat(img, 3, axis=-1)"]),
        (np.zeros((4, 4, 3), dtype=np.int64), ["uint8", "int64"]),
        (np.zeros((4, 4), dtype=np.uint8), ["got 2", "HxWx3", "grayscale"]),
        (np.zeros((1, 1, 4, 4, 3), dtype=np.uint8), ["got 5", "NxHxWx3"]),
        (np.zeros((4, 4, 4), dtype=np.uint8), ["(4, 4, 4)", "alpha", "input_color='bgr'"]),
        (np.zeros((3, 8, 8), dtype=np.uint8), ["(3, 8, 8)", "transpose(1, 2, 0)"]),
        (np.zeros((0, 4, 3), dtype=np.uint8), ["non-empty", "(0, 4, 3)"]),
        (np.zeros((0, 4, 4, 3), dtype=np.uint8), ["non-empty"]),
    ],
)
def test_bad_images_say_expected_got_and_fix(image: np.ndarray, fragments: list[str]) -> None:
    with pytest.raises(PreprocessError) as info:
        Preprocess()(image)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(("shape", "axes"), [((3, 8, 8), (1, 2, 0)), ((2, 3, 8, 8), (0, 2, 3, 1))])
def test_the_channels_first_hints_work(shape: tuple[int, ...], axes: tuple[int, ...]) -> None:
    """Following the hint gives an image Preprocess takes, for one image and for a batch."""
    image = np.zeros(shape, np.uint8)
    with pytest.raises(PreprocessError, match=re.escape(f".transpose{axes}")):
        Preprocess()(image)
    Preprocess()(image.transpose(axes))


@pytest.mark.parametrize("mode", ["P", "CMYK", "YCbCr", "L", "RGBA", "I;16"])
def test_pil_images_other_than_rgb_are_told_to_convert(mode: str) -> None:
    """np.asarray of these is palette indices, K as a 4th channel, another colour space...: the
    array hints (drop alpha, repeat grayscale) would give a wrong image without an error."""
    from PIL import Image

    image = Image.new(mode, (4, 4))
    with pytest.raises(PreprocessError, match=re.escape("img.convert('RGB')")):
        Preprocess()(image)
    assert Preprocess(layout="nhwc", dtype="uint8")(image.convert("RGB")).shape == (1, 4, 4, 3)


def test_mean_and_std_in_0_to_1_units_warn_with_the_factor() -> None:
    with pytest.warns(UniferWarning, match="multiply both by 255"):
        Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Preprocess(mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0))  # 0..1 inputs: fine
        Preprocess(mean=np.array([127.5] * 3), std=np.array([127.5] * 3))  # arrays are taken


def test_images_of_different_sizes_in_a_list_say_how_to_batch() -> None:
    with pytest.raises(PreprocessError, match="images of one size") as info:
        Preprocess(size=(8, 8))([random_image(8, 8), random_image(6, 10)])
    assert isinstance(info.value.__cause__, ValueError)  # numpy's own message, chained


def test_preprocess_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="uint8"):
        Preprocess()(np.zeros((2, 2, 3), dtype=np.float64))


def test_array_likes_go_through_np_asarray() -> None:
    class PixelBuffer:
        def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
            return solid(2, 2, (1, 2, 3))

    out = Preprocess(layout="nhwc", dtype="uint8")(PixelBuffer())
    np.testing.assert_array_equal(out[0, 0, 0], [1, 2, 3])

    # A nested list becomes int64, which is rejected: the pixel type must be explicit.
    with pytest.raises(PreprocessError, match="int64"):
        Preprocess()([[[1, 2, 3], [4, 5, 6]]])


# -- result ownership ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pre",
    [
        Preprocess(),
        Preprocess(layout="nhwc"),
        Preprocess(layout="nhwc", dtype="uint8"),
        Preprocess(dtype="uint8"),
        Preprocess(input_color="bgr"),
        Preprocess(dtype="float16"),
        Preprocess(size=(16, 24)),  # already that size: the resize is skipped
        Preprocess(size=(8, 8)),
    ],
    ids=repr,
)
def test_result_is_a_new_c_contiguous_array(pre: Preprocess) -> None:
    image = random_image(16, 24)
    before = image.copy()

    out = pre(image)

    assert out.flags.c_contiguous
    assert out.flags.writeable
    assert not np.shares_memory(out, image)
    out[...] = 0
    np.testing.assert_array_equal(image, before)


def test_result_of_a_batch_is_not_aliased() -> None:
    batch = np.stack([random_image(seed=i) for i in range(2)])
    out = Preprocess(layout="nhwc", dtype="uint8")(batch)
    assert out.shape == batch.shape
    assert not np.shares_memory(out, batch)


def test_non_contiguous_input_is_handled() -> None:
    wide = random_image(16, 48)
    view = wide[:, ::2]  # strided view
    assert not view.flags.c_contiguous

    out = Preprocess(layout="nhwc", dtype="uint8", size=(8, 12))(view)
    same = Preprocess(layout="nhwc", dtype="uint8", size=(8, 12))(np.ascontiguousarray(view))

    np.testing.assert_array_equal(out, same)


# -- resizing --------------------------------------------------------------------------------------


@pytest.fixture(params=["cv2", "pillow"])
def resizer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run the test with OpenCV, then with Pillow (OpenCV made unimportable); check it was used."""
    import cv2
    from PIL import Image

    calls: list[str] = []
    if request.param == "pillow":
        monkeypatch.setitem(sys.modules, "cv2", None)
        original = Image.Image.resize

        def pil_resize(self: Image.Image, *args: object, **kwargs: object) -> Image.Image:
            calls.append("pillow")
            return original(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Image.Image, "resize", pil_resize)
    else:
        cv2_resize = cv2.resize

        def spy(*args: object, **kwargs: object) -> object:
            calls.append("cv2")
            return cv2_resize(*args, **kwargs)  # type: ignore[call-overload]

        monkeypatch.setattr(cv2, "resize", spy)
    yield request.param
    assert calls, f"{request.param} was never called"
    assert set(calls) == {request.param}


def test_stretch_reaches_exact_size(resizer: str) -> None:
    image = np.zeros((40, 80, 3), dtype=np.uint8)
    image[:, 40:] = 255  # left half black, right half white

    out = raw(size=(10, 30))(image)

    assert out.shape == (1, 10, 30, 3)
    assert (out[0, :, :12] < 20).all()  # the aspect ratio is ignored: left half still dark
    assert (out[0, :, 18:] > 235).all()


def test_stretch_upscales(resizer: str) -> None:
    out = raw(size=(20, 20))(solid(5, 4, BLUE))
    assert out.shape == (1, 20, 20, 3)
    assert (out[0] == BLUE).all()


def test_letterbox_wide_image_pads_top_and_bottom(resizer: str) -> None:
    out = raw(size=(100, 100), resize="letterbox")(solid(100, 200, (255, 255, 255)))[0]

    assert out.shape == (100, 100, 3)
    # 100x200 scaled by 0.5 -> 50x100, centred: rows 25..74 are image, the rest padding.
    assert (out[:25] == LETTERBOX_FILL).all()
    assert (out[75:] == LETTERBOX_FILL).all()
    assert (out[25:75] == 255).all()


def test_letterbox_tall_image_pads_left_and_right(resizer: str) -> None:
    out = raw(size=(60, 90), resize="letterbox")(solid(120, 60, GREEN))[0]

    # 120x60 scaled by 0.5 -> 60x30, centred in width 90: columns 30..59.
    assert (out[:, :30] == LETTERBOX_FILL).all()
    assert (out[:, 60:] == LETTERBOX_FILL).all()
    assert (out[:, 30:60] == GREEN).all()


def test_letterbox_padding_is_normalised_like_pixels(resizer: str) -> None:
    pre = Preprocess(size=(10, 10), resize="letterbox", mean=(127.5,) * 3, std=(127.5,) * 3)
    out = pre(solid(10, 20, (255, 255, 255)))  # scaled to 5x10, rows 2..6 of the output
    np.testing.assert_allclose(out[0, :, 0, 0], (LETTERBOX_FILL - 127.5) / 127.5, atol=1e-6)
    np.testing.assert_allclose(out[0, :, 5, 5], 1.0, atol=1e-6)


def test_center_crop_keeps_the_centre(resizer: str) -> None:
    image = solid(100, 200, GREEN)
    image[:, :40] = RED
    image[:, 160:] = BLUE

    out = raw(size=(50, 50), resize="center_crop")(image)[0]

    # Scaled by 0.5 to 50x100 (the shorter side covers), then columns 25..74 are kept: all green.
    assert out.shape == (50, 50, 3)
    assert (out == GREEN).all()


def test_center_crop_tall_image_crops_rows(resizer: str) -> None:
    image = solid(300, 100, GREEN)
    image[:60] = RED
    image[240:] = BLUE

    out = raw(size=(20, 20), resize="center_crop")(image)[0]

    assert out.shape == (20, 20, 3)
    assert (out == GREEN).all()


def test_center_crop_upscales_small_images(resizer: str) -> None:
    out = raw(size=(32, 32), resize="center_crop")(solid(8, 16, RED))
    assert out.shape == (1, 32, 32, 3)
    assert (out[0] == RED).all()


def test_shrinking_averages_instead_of_aliasing(resizer: str) -> None:
    checkerboard = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)
    image = np.repeat(checkerboard[..., None], 3, axis=2)

    out = raw(size=(4, 4))(image)

    # Nearest-neighbour sampling would give pure 0 or 255; an antialiased shrink gives mid-grey.
    assert ((out > 110) & (out < 145)).all()


@pytest.mark.parametrize("size", [(112, 112), (112, 50)])
def test_an_axis_that_shrinks_is_averaged_while_the_other_grows(
    resizer: str, size: tuple[int, int]
) -> None:
    """Rows shrink 200 -> 112 while columns grow 100 -> 112: the rows must still be averaged
    (a plain bilinear resize sampled alternate rows, 9..246 instead of about 127)."""
    image = np.zeros((200, 100, 3), np.uint8)
    image[::2] = 255  # alternating black and white rows, mean 127.5

    out = raw(size=size)(image).astype(int)

    assert np.abs(out - 127.5).max() < 20


@pytest.mark.parametrize("library", ["cv2", "pillow"])
def test_center_crop_of_an_elongated_image_computes_only_the_window(
    library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 4x60 image covering 16x16 is enlarged to 16x240, of which 16 columns are kept: only
    those are computed (1x40000 at 224 would have needed 6 GB), sampled as the full resize is."""
    image = random_image(4, 60, seed=3)
    if library == "pillow":
        monkeypatch.setitem(sys.modules, "cv2", None)
    full = raw(size=(16, 240))(image)[0]  # the whole enlarged image, by the same library
    sizes: list[tuple[int, ...]] = []
    if library == "cv2":
        import cv2

        for name in ("resize", "warpAffine"):
            real = getattr(cv2, name)

            def spy(*args: object, _real: object = real, **kwargs: object) -> object:
                out = _real(*args, **kwargs)  # type: ignore[operator]
                sizes.append(out.shape)  # type: ignore[attr-defined]
                return out

            monkeypatch.setattr(cv2, name, spy)
    out = raw(size=(16, 16), resize="center_crop")(image)[0]
    if library == "cv2":
        assert sizes == [(16, 16, 3)]  # nothing larger than the window was made
    want = full[:, 112:128]
    assert np.abs(out.astype(int) - want.astype(int)).max() <= 2


def test_opencv_and_pillow_agree_on_a_smooth_image(monkeypatch: pytest.MonkeyPatch) -> None:
    ramp = np.linspace(0, 255, 64).astype(np.uint8)
    image = np.repeat(np.repeat(ramp[None, :, None], 48, axis=0), 3, axis=2)
    pre = raw(size=(24, 32))

    with_cv2 = pre(image)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with_pillow = pre(image)

    diff = np.abs(with_cv2.astype(int) - with_pillow.astype(int))
    assert diff[:, :, 1:-1].max() <= 3  # edges differ by design of each library's filter


def test_resize_without_opencv_or_pillow_says_how_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("cv2", "PIL", "PIL.Image"):
        monkeypatch.setitem(sys.modules, name, None)

    with pytest.raises(PreprocessError) as info:
        Preprocess(size=(8, 8))(random_image(16, 16))

    message = str(info.value)
    assert "OpenCV or Pillow" in message
    assert 'pip install "unifer[image]"' in message
    assert "16x16" in message
    assert "8x8" in message


def test_image_at_target_size_needs_no_resize_library(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("cv2", "PIL", "PIL.Image"):
        monkeypatch.setitem(sys.modules, name, None)
    image = random_image(16, 24)

    for mode in ("stretch", "letterbox", "center_crop"):
        out = raw(size=(16, 24), resize=mode)(image)
        np.testing.assert_array_equal(out[0], image)
    assert raw()(image).shape == (1, 16, 24, 3)


def test_importing_preprocess_imports_neither_opencv_nor_pillow() -> None:
    code = (
        "import sys, unifer._preprocess; "
        "print(sorted(m for m in ('cv2', 'PIL') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"mean": (1.0,)}, "mean must have 3 values, got 1"),
        ({"std": (1.0, 2.0, 3.0, 4.0)}, "std must have 3 values, got 4"),
        ({"mean": 127.5}, "mean must be 3 numbers"),
        ({"mean": "abc"}, "mean must be 3 numbers"),
        ({"mean": (1.0, "x", 2.0)}, "mean must be 3 finite numbers"),
        ({"std": (1.0, float("nan"), 1.0)}, "std must be 3 finite numbers"),
        ({"std": (1.0, 0.0, 1.0)}, "std must be nonzero"),
        ({"size": (0, 10)}, "size must be None or (height, width)"),
        ({"size": (-1, 10)}, "size must be None or (height, width)"),
        ({"size": (1.5, 10)}, "size must be None or (height, width)"),
        ({"size": (True, 10)}, "size must be None or (height, width)"),
        ({"size": 224}, "size must be None or (height, width)"),
        ({"size": (224,)}, "size must be None or (height, width)"),
        ({"resize": "fit"}, "resize must be one of"),
        ({"input_color": "rgba"}, "input_color must be one of"),
        ({"color": "gray"}, "color must be one of"),
        ({"layout": "chw"}, "layout must be one of"),
        ({"layout": "auto"}, "layout must be one of"),
        ({"dtype": "float64"}, "dtype must be one of"),
        ({"dtype": "uint8", "mean": (1.0, 1.0, 1.0)}, "dtype='uint8' cannot hold normalised"),
        ({"dtype": "uint8", "std": (2.0, 2.0, 2.0)}, "dtype='uint8' cannot hold normalised"),
        # Finite as Python floats, but float32 (or float16) cannot hold the results: inf pixels.
        ({"mean": (1e300, 0.0, 0.0)}, "beyond what float32 holds"),
        ({"std": (1e-50, 1.0, 1.0)}, "beyond what float32 holds"),
        ({"std": (1e-3, 1.0, 1.0), "dtype": "float16"}, "beyond what float16 holds"),
    ],
)
def test_validation_names_the_field(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(PreprocessError) as info:
        Preprocess(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_lists_are_normalised_to_tuples() -> None:
    pre = Preprocess(size=[112, 96], mean=[1, 2, 3], std=[4, 5, 6])  # type: ignore[arg-type]

    assert pre.size == (112, 96)
    assert pre.mean == (1.0, 2.0, 3.0)
    assert pre.std == (4.0, 5.0, 6.0)
    assert all(isinstance(v, float) for v in pre.mean)
    assert pre == Preprocess(size=(112, 96), mean=(1.0, 2.0, 3.0), std=(4.0, 5.0, 6.0))
    assert hash(pre) == hash(Preprocess(size=(112, 96), mean=(1, 2, 3), std=(4, 5, 6)))


def test_numpy_dtypes_are_stored_as_names() -> None:
    """An equal spec must hash equal and serialise: np.dtype compares equal to its name."""
    for dtype in (np.float32, np.dtype("float32")):
        pre = Preprocess(dtype=dtype)  # type: ignore[arg-type]
        assert pre.dtype == "float32" and type(pre.dtype) is str
        assert pre == Preprocess() and hash(pre) == hash(Preprocess())
        json.dumps(pre.to_dict())
    assert Preprocess(dtype=np.float16).dtype == "float16"  # type: ignore[arg-type]
    with pytest.raises(PreprocessError, match="dtype must be one of"):
        Preprocess(dtype=np.float64)  # type: ignore[arg-type]


def test_numpy_scalars_are_accepted() -> None:
    pre = Preprocess(size=(np.int64(8), np.int32(8)), mean=tuple(np.float32([1, 2, 3])))  # type: ignore[arg-type]
    assert pre.size == (8, 8)
    assert type(pre.size[0]) is int
    assert pre.mean == (1.0, 2.0, 3.0)


def test_spec_is_frozen_and_replace_revalidates() -> None:
    pre = Preprocess.arcface()
    with pytest.raises(dataclasses.FrozenInstanceError):
        pre.size = (1, 1)  # type: ignore[misc]

    assert dataclasses.replace(pre, layout="nhwc").layout == "nhwc"
    with pytest.raises(PreprocessError, match="mean must have 3 values"):
        dataclasses.replace(pre, mean=(1.0, 2.0))  # type: ignore[arg-type]


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        Preprocess((112, 112))  # type: ignore[call-arg]


# -- serialisation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pre",
    [
        Preprocess(),
        Preprocess.arcface(),
        Preprocess.imagenet(256),
        Preprocess(
            size=(10, 20),
            resize="letterbox",
            input_color="bgr",
            color="bgr",
            mean=(1.5, 2.5, 3.5),
            std=(0.5, 0.25, 2.0),
            layout="nhwc",
            dtype="float16",
        ),
        Preprocess(dtype="uint8", layout="nhwc"),
    ],
    ids=repr,
)
def test_to_dict_from_dict_round_trip_through_json(pre: Preprocess) -> None:
    data = pre.to_dict()

    assert set(data) == {f.name for f in dataclasses.fields(Preprocess)}
    assert Preprocess.from_dict(data) == pre
    assert Preprocess.from_dict(json.loads(json.dumps(data))) == pre


def test_to_dict_is_plain_json_data() -> None:
    assert Preprocess.arcface().to_dict() == {
        "size": [112, 112],
        "resize": "stretch",
        "input_color": "rgb",
        "color": "rgb",
        "mean": [127.5, 127.5, 127.5],
        "std": [127.5, 127.5, 127.5],
        "layout": "nchw",
        "dtype": "float32",
    }


def test_from_dict_missing_keys_keep_defaults() -> None:
    assert Preprocess.from_dict({"size": [112, 112]}) == Preprocess(size=(112, 112))
    assert Preprocess.from_dict({}) == Preprocess()


def test_from_dict_rejects_unknown_keys_and_lists_valid_ones() -> None:
    with pytest.raises(PreprocessError) as info:
        Preprocess.from_dict({"size": [1, 1], "scale": 255, "__class__": "x"})
    message = str(info.value)
    assert "'scale'" in message
    assert "'__class__'" in message
    for key in ("size", "resize", "input_color", "color", "mean", "std", "layout", "dtype"):
        assert key in message


def test_from_dict_type_checks_values() -> None:
    with pytest.raises(PreprocessError, match="size must be"):
        Preprocess.from_dict({"size": "112x112"})
    with pytest.raises(PreprocessError, match="layout must be one of"):
        Preprocess.from_dict({"layout": 4})
    with pytest.raises(PreprocessError, match="must be a mapping"):
        Preprocess.from_dict([["size", [1, 1]]])  # type: ignore[arg-type]


def test_from_json_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(Preprocess.arcface().to_dict()), encoding="utf-8")

    assert Preprocess.from_json(path) == Preprocess.arcface()
    assert Preprocess.from_json(str(path)) == Preprocess.arcface()


def test_from_json_bad_json_names_the_file_and_chains(tmp_path: Path) -> None:
    path = tmp_path / "broken.preprocess.json"
    path.write_text('{"size": [112, 112],}', encoding="utf-8")

    with pytest.raises(PreprocessError) as info:
        Preprocess.from_json(path)

    assert str(path) in str(info.value)
    assert "not valid JSON" in str(info.value)
    assert "line 1" in str(info.value)
    assert isinstance(info.value.__cause__, json.JSONDecodeError)


def test_from_json_never_evaluates(tmp_path: Path) -> None:
    path = tmp_path / "evil.json"
    path.write_text("__import__('os').getcwd()", encoding="utf-8")
    with pytest.raises(PreprocessError, match="not valid JSON"):
        Preprocess.from_json(path)


def test_from_json_invalid_spec_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text('{"mean": [1]}', encoding="utf-8")
    with pytest.raises(PreprocessError) as info:
        Preprocess.from_json(path)
    assert str(path) in str(info.value)
    assert "mean must have 3 values, got 1" in str(info.value)

    path.write_text("[1, 2, 3]", encoding="utf-8")
    with pytest.raises(PreprocessError, match="must be a mapping"):
        Preprocess.from_json(path)


def test_from_json_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_bytes(b'{"layout": "\xff"}')
    with pytest.raises(PreprocessError, match="UTF-8"):
        Preprocess.from_json(path)


def test_from_json_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Preprocess.from_json(tmp_path / "absent.json")


# -- sidecar ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "sidecar"),
    [
        ("models/arcface.onnx", "models/arcface.preprocess.json"),
        ("model.xml", "model.preprocess.json"),
        ("/abs/dir/r50.v2.onnx", "/abs/dir/r50.v2.preprocess.json"),
    ],
)
def test_sidecar_path(model: str, sidecar: str) -> None:
    assert sidecar_path(Path(model)) == Path(sidecar)
    assert sidecar_path(model) == Path(sidecar)


def test_load_sidecar_absent_returns_none(tmp_path: Path) -> None:
    model = tmp_path / "arcface.onnx"
    model.write_bytes(b"")
    assert load_sidecar(model) is None


def test_load_sidecar_present(tmp_path: Path) -> None:
    model = tmp_path / "arcface.onnx"
    pre = Preprocess.arcface()
    (tmp_path / "arcface.preprocess.json").write_text(json.dumps(pre.to_dict()), encoding="utf-8")

    assert load_sidecar(model) == pre


def test_load_sidecar_broken_raises(tmp_path: Path) -> None:
    (tmp_path / "arcface.preprocess.json").write_text("{", encoding="utf-8")
    with pytest.raises(PreprocessError, match=r"arcface\.preprocess\.json"):
        load_sidecar(tmp_path / "arcface.onnx")


# -- check_layout ----------------------------------------------------------------------------------


def spec(shape: tuple[int | str | None, ...], dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name="data", shape=shape, dtype=np.dtype(dtype))


@pytest.mark.parametrize(
    ("pre", "tensor"),
    [
        (Preprocess.arcface(), spec((1, 3, 112, 112))),
        (Preprocess.arcface(), spec(("batch", 3, 112, 112))),
        (Preprocess.arcface(), spec((None, None, None, None))),
        (Preprocess.arcface(), spec(("N", 3, "H", "W"))),
        (Preprocess(size=(112, 112), layout="nhwc"), spec((1, 112, 112, 3))),
        (Preprocess(layout="nhwc"), spec((1, 480, 640, 3))),  # size=None: any static H/W
        (Preprocess(dtype="float16"), spec((1, 3, 8, 8), "float16")),
        (Preprocess(dtype="uint8", layout="nhwc"), spec((1, 8, 8, 3), "uint8")),
        (Preprocess(layout="nhwc"), spec((1, 3, 3, 3))),  # ambiguous shapes are not guessed
        (Preprocess(layout="nchw"), spec((1, 3, 3, 3))),
    ],
)
def test_check_layout_accepts(pre: Preprocess, tensor: TensorSpec) -> None:
    pre.check_layout(tensor)


@pytest.mark.parametrize(
    ("pre", "tensor", "fragments"),
    [
        (
            Preprocess.arcface(),
            spec((1, 112, 112, 3)),
            ["'data'", "[1,112,112,3]", "NHWC", "layout='nhwc'"],
        ),
        (
            Preprocess(layout="nhwc"),
            spec((1, 3, 112, 112)),
            ["[1,3,112,112]", "NCHW", "layout='nchw'"],
        ),
        (Preprocess.arcface(), spec((1, 3, 224, 224)), ["224x224", "size=(224, 224)"]),
        (
            Preprocess(size=(112, 112), layout="nhwc"),
            spec((1, 96, 112, 3)),
            ["96x112", "size=(96, 112)"],
        ),
        (Preprocess.arcface(), spec((1, 512)), ["rank 2", "preprocess=False"]),
        (Preprocess.arcface(), spec((3, 112, 112)), ["rank 3"]),
        (Preprocess.arcface(), spec((1, 1, 112, 112)), ["1 channels", "preprocess=False"]),
        (Preprocess(layout="nhwc"), spec((1, 112, 112, 4)), ["4 channels"]),
        (Preprocess.arcface(), spec((1, 3, 112, 112), "float16"), ["float16", "dtype='float16'"]),
        (Preprocess(dtype="float16"), spec((1, 3, 8, 8)), ["float32", "dtype='float32'"]),
        (Preprocess.arcface(), spec((1, 3, 112, 112), "int8"), ["int8", "Engine.run()"]),
    ],
)
def test_check_layout_rejects_with_a_fix(
    pre: Preprocess, tensor: TensorSpec, fragments: list[str]
) -> None:
    with pytest.raises(PreprocessError) as info:
        pre.check_layout(tensor)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_error_messages_point_to_the_docs() -> None:
    with pytest.raises(PreprocessError, match=r"docs/errors\.md#preprocess-error"):
        Preprocess(mean=(1.0,))  # type: ignore[arg-type]
