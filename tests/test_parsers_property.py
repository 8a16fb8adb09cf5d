"""Property-based tests of the command-line parsers (issue 12, item 4): every valid input round-trips, and
arbitrary text raises nothing but a :class:`ZoomLDMError` (a one-line CLI message) or typer's
``BadParameter`` — never a ``ValueError``, ``IndexError`` or a hang.

Parsers: magnifications (``Scales.parse``, ``parse_level``), ``--region``, ``--tile-batch``, ``--levels``,
``--tissue-threshold``, ``--encoder-option`` / ``--set`` KEY=VALUE, ``--blocks``.
"""

from __future__ import annotations

import math

import pytest
import typer
from hypothesis import example, given, settings
from hypothesis import strategies as st

from zoomldm.cli.large import _parse_region, _parse_tile_batch
from zoomldm.cli.prepare import _parse_levels, _parse_thresholds, parse_option
from zoomldm.errors import ZoomLDMError
from zoomldm.features.unet_features import parse_blocks
from zoomldm.sampling.levels import parse_level
from zoomldm.scales import PATHOLOGY, SATELLITE
from zoomldm.train.config import apply_overrides

ALLOWED = (ZoomLDMError, typer.BadParameter)
FAST = settings(max_examples=150, deadline=None, derandomize=True, database=None)  # deterministic

#: text a user can type: any characters, and the ones the parsers split on, often
TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789,.-_=xX eE+naif²٣", max_size=30),
)
#: inputs that once hung or crashed a parser: huge ranges, Unicode digits int() refuses, 5000-digit numbers
NASTY = ["0-99999999999", "²", "1-²", "٣", "1" * 5000, "x=" + "1" * 5000, "a=" + "[" * 2000, "nan", "-0x"]


def _never_crashes(parse, text: str):
    try:
        return parse(text)
    except ALLOWED:
        return None


# -- magnifications ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scales", [PATHOLOGY, SATELLITE], ids=["pathology", "satellite"])
def test_every_level_round_trips_by_name_key_and_index(scales) -> None:
    for level in scales:
        spellings = [level.name, level.key, level.name.upper(), f" {level.name} ", level.index]
        assert all(scales.parse(s) == level for s in spellings), level


@FAST
@given(TEXT)
@example("²")
@example("99x")
def test_magnification_parser_never_crashes(text: str) -> None:
    for scales in (PATHOLOGY, SATELLITE):
        level = _never_crashes(scales.parse, text)
        assert level is None or level in list(scales)


@FAST
@given(st.integers())
def test_magnification_index_out_of_range_is_a_user_error(index: int) -> None:
    if 0 <= index < len(PATHOLOGY):
        assert PATHOLOGY.parse(index).index == index
    else:
        with pytest.raises(ZoomLDMError):
            PATHOLOGY.parse(index)


class _Pipe:
    """What :func:`parse_level` reads of a pipeline: its scales."""

    def __init__(self, scales) -> None:
        self.scales = scales


@FAST
@given(TEXT)
@example("2_5x")
@example("99x")
def test_parse_level_names_the_option(text: str) -> None:
    try:
        level = parse_level(_Pipe(PATHOLOGY), text, "--guide")
    except ZoomLDMError as err:
        assert str(err).startswith("--guide")
    else:
        assert level in list(PATHOLOGY)


# -- --region X,Y,W,H ------------------------------------------------------------------------------------
@FAST
@given(st.tuples(*[st.integers(-(10**9), 10**9)] * 4), st.sampled_from([",", ", ", " , "]))
def test_region_round_trips(region: tuple[int, int, int, int], sep: str) -> None:
    assert _parse_region(sep.join(map(str, region))) == region


@FAST
@given(TEXT)
@example("1,2")
@example("1,2,3,4,5")
@example(",".join(["1" * 5000] * 4))
def test_region_parser_never_crashes(text: str) -> None:
    region = _never_crashes(_parse_region, text)
    assert region is None or (len(region) == 4 and all(isinstance(v, int) for v in region))


def test_no_region_is_none() -> None:
    assert _parse_region(None) is None


# -- --tile-batch N|auto ------------------------------------------------------------------------------
@FAST
@given(st.integers(1, 10**6))
def test_tile_batch_round_trips(n: int) -> None:
    assert _parse_tile_batch(str(n)) == n
    assert _parse_tile_batch("auto") == "auto"


@FAST
@given(TEXT)
@example("1" * 5000)
def test_tile_batch_parser_never_crashes(text: str) -> None:
    value = _never_crashes(_parse_tile_batch, text)
    assert value is None or value == "auto" or isinstance(value, int)


# -- --levels 0-3 | 20x,5x ---------------------------------------------------------------------------
@FAST
@given(st.integers(0, 7), st.integers(0, 7))
def test_level_range_round_trips(lo: int, hi: int) -> None:
    lo, hi = min(lo, hi), max(lo, hi)
    assert _parse_levels(f"{lo}-{hi}") == tuple(range(lo, hi + 1))


@FAST
@given(st.lists(st.sampled_from(PATHOLOGY.names + [m.key for m in PATHOLOGY]), min_size=1, max_size=8))
def test_level_names_round_trip(names: list[str]) -> None:
    assert _parse_levels(",".join(names)) == tuple(names)


@FAST
@given(TEXT)
@example("0-99999999999")
@example("²")
@example("1-²")
def test_levels_parser_never_crashes_or_hangs(text: str) -> None:
    levels = _never_crashes(_parse_levels, text)
    assert levels is None or (isinstance(levels, tuple) and len(levels) <= 100)


# -- --tissue-threshold 0.5 | 0.5,0.7 -------------------------------------------------------------------
@FAST
@given(st.lists(st.floats(0, 1), min_size=1, max_size=8))
def test_thresholds_round_trip(values: list[float]) -> None:
    parsed = _parse_thresholds(",".join(repr(v) for v in values))
    assert parsed == (values[0] if len(values) == 1 else tuple(values))


@FAST
@given(TEXT)
@example("nan")
@example("inf")
@example("2")
@example("-0.5")
def test_threshold_parser_accepts_only_fractions(text: str) -> None:
    """Whatever it returns is a fraction in [0, 1]: NaN, inf and out-of-range values are refused here,
    where the option is named, not later in a worker."""
    parsed = _never_crashes(_parse_thresholds, text)
    values = () if parsed is None else (parsed if isinstance(parsed, tuple) else (parsed,))
    assert all(math.isfinite(v) and 0 <= v <= 1 for v in values), (text, parsed)


# -- KEY=VALUE: --encoder-option and train --set --------------------------------------------------------
KEYS = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True)


@FAST
@given(
    KEYS,
    st.one_of(
        st.integers(-(10**12), 10**12), st.booleans(), st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True)
    ),
)
def test_encoder_option_round_trips(key: str, value) -> None:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    parsed = parse_option(f"{key}={text}")
    assert parsed[0] == key
    if text in ("inf", "nan", "infinity"):  # float("inf") is a number to timm too
        return
    assert parsed[1] == value and type(parsed[1]) is type(value)


@FAST
@given(TEXT)
@example("x=" + "1" * 5000)
def test_encoder_option_parser_never_crashes(text: str) -> None:
    parsed = _never_crashes(parse_option, text)
    assert parsed is None or (isinstance(parsed, tuple) and len(parsed) == 2)


@FAST
@given(
    st.lists(KEYS, min_size=1, max_size=3),
    st.one_of(
        st.integers(-(10**9), 10**9),
        st.floats(allow_nan=False, allow_infinity=False, width=32),
        st.booleans(),
    ),
)
def test_set_override_round_trips(parts: list[str], value) -> None:
    text = str(value).lower() if isinstance(value, bool) else repr(value)
    data = apply_overrides({}, [f"{'.'.join(parts)}={text}"])
    for p in parts[:-1]:
        data = data[p]
    assert data[parts[-1]] == value


@FAST
@given(TEXT)
@example("a=" + "1" * 5000)
@example("a=" + "[" * 2000)
@example("a.b=1")
def test_set_override_parser_never_crashes(text: str) -> None:
    data = _never_crashes(lambda t: apply_overrides({"a": 1}, [t]), text)
    assert data is None or isinstance(data, dict)  # a refusal (None) or the overridden mapping


# -- --blocks mid,up1 ----------------------------------------------------------------------------------
@FAST
@given(st.lists(st.sampled_from(["mid", "up0", "up1", "up2", "up3"]), min_size=1, max_size=5, unique=True))
def test_blocks_round_trip(blocks: list[str]) -> None:
    assert parse_blocks(",".join(blocks), n_up=4) == tuple(blocks)


@FAST
@given(TEXT)
@example("up²")
@example("up" + "9" * 5000)
def test_blocks_parser_never_crashes(text: str) -> None:
    blocks = _never_crashes(lambda t: parse_blocks(t, n_up=4), text)
    assert blocks is None or all(b == "mid" or b in {"up0", "up1", "up2", "up3"} for b in blocks)


@pytest.mark.parametrize("text", NASTY)
def test_known_nasty_inputs(text: str) -> None:
    for parse in (
        PATHOLOGY.parse,
        _parse_region,
        _parse_tile_batch,
        _parse_levels,
        _parse_thresholds,
        parse_option,
        lambda t: apply_overrides({}, [t]),
        lambda t: parse_blocks(t, n_up=4),
    ):
        try:
            parse(text)
        except ALLOWED as err:  # refused: one short line, however long the pasted argument (5000 chars here)
            message = str(err)
            assert message and "\n" not in message and len(message) <= 300, message[:400]
