"""medge.edge.config: the one type and range check behind every configuration dataclass."""
import dataclasses
import math

import pytest

from medge.edge.config import check_ranges, check_types, from_dict
from medge.edge.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Cfg:
    n: int = 1
    x: float = 0.5
    flag: bool = False
    name: str = "a"
    sizes: tuple = (1, 2)  # not a scalar: its owner checks it


# The same fields as ``from __future__ import annotations`` leaves them: types as strings.
Stringly = dataclasses.make_dataclass("Stringly", [("n", "int", 1), ("x", "float", 0.5)])


def test_good_values_pass_and_an_int_is_a_float():
    check_types(Cfg())
    check_types(Cfg(x=2, sizes="anything"))
    check_types(Stringly(n=3, x=4))


@pytest.mark.parametrize("field, value, words", [
    ("n", True, "n must be an integer, got True"),  # a bool is not an int
    ("n", 1.0, "n must be an integer, got 1.0"),
    ("x", math.nan, "x must be a finite number, got nan"),
    ("x", math.inf, "x must be a finite number, got inf"),
    ("x", "0.5", "x must be a finite number, got '0.5'"),
    ("x", False, "x must be a finite number, got False"),
    ("flag", 1, "flag must be true or false, got 1"),
    ("name", None, "name must be a string, got None"),
])
def test_a_wrong_type_is_a_config_error_naming_the_field(field, value, words):
    with pytest.raises(ConfigError, match=f"^Cfg: {words}$"):
        check_types(Cfg(**{field: value}))


def test_string_annotations_are_checked_too():
    with pytest.raises(ConfigError, match=r"^Stringly: n must be an integer, got 'three'; x must be a finite number"):
        check_types(Stringly(n="three", x=math.nan))


def test_every_bad_field_and_every_failed_range_in_one_error():
    with pytest.raises(ConfigError, match=r"^Cfg: n must be an integer, got True; flag must be true or false, got 'no'$"):
        check_types(Cfg(n=True, flag="no"))
    check_ranges("cfg", [(True, "never shown")])
    with pytest.raises(ConfigError, match=r"^cfg: n must be >= 1; x must be < 1$"):
        check_ranges("cfg", [(False, "n must be >= 1"), (True, "fine"), (False, "x must be < 1")])


def test_from_dict_builds_the_dataclass_and_refuses_unknown_keys_and_non_mappings():
    assert from_dict(Cfg, {"n": 3, "name": "b"}) == Cfg(n=3, name="b")
    with pytest.raises(ConfigError, match=r"^Cfg: unknown keys \['extra', 'zeta'\]$"):
        from_dict(Cfg, {"n": 3, "zeta": 1, "extra": 2})
    with pytest.raises(ConfigError, match="^Cfg: expected a mapping, got list$"):
        from_dict(Cfg, [1, 2])
