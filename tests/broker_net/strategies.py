"""Hypothesis strategies for broker-net values and messages, and an equality that knows arrays.

Message strategies are derived from the pydantic models' field annotations and constraints, so
a field added to a model is covered without touching this file; only the cross-field rules of
:class:`FARequest` and :class:`FAReply` are spelled out.
"""

from __future__ import annotations

import math
import types
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, Literal, Union, cast, get_args, get_origin

import annotated_types
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import BaseModel

from broker_net.messages import FAReply, FARequest

# --- plain values --------------------------------------------------------------------------------

ARRAY_DTYPES = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?"),
    hnp.complex_number_dtypes(endianness="?"),
    hnp.datetime64_dtypes(endianness="?"),
    hnp.timedelta64_dtypes(endianness="?"),
    hnp.byte_string_dtypes(min_len=1, max_len=4),
    hnp.unicode_string_dtypes(min_len=1, max_len=4),
    hnp.nested_dtypes(max_itemsize=64),
)


def _views(array: np.ndarray) -> st.SearchStrategy[np.ndarray]:
    """The array itself, a Fortran-ordered copy, or a strided (non-contiguous) view."""
    options = [st.just(array), st.just(np.asfortranarray(array))]
    if array.ndim:
        options.append(st.just(array[..., ::2]))
        options.append(st.just(array[::-1]))
        options.append(st.just(array.T))
    return st.one_of(options)


def arrays(dtypes: st.SearchStrategy[np.dtype] = ARRAY_DTYPES) -> st.SearchStrategy[np.ndarray]:
    """Arrays of any non-object dtype and any shape (0-d and empty included), in any layout."""
    shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
    return hnp.arrays(dtypes, shapes).flatmap(_views)


def _aware_datetimes() -> st.SearchStrategy[datetime]:
    offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
        lambda minutes: timezone(timedelta(minutes=minutes))
    )
    # One day of margin at each end: the UTC instant of an aware datetime in year 1 or 9999
    # may fall outside what datetime can represent.
    return st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=offsets
    )


AWARE_DATETIMES = _aware_datetimes()

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=20),
    AWARE_DATETIMES,
)
"""Every scalar the codec carries; tuples and sets are left out since they decode as lists."""


def payloads(*, with_arrays: bool = True) -> st.SearchStrategy[Any]:
    """Nested maps and lists of scalars and (optionally) numpy arrays."""
    leaves = st.one_of(SCALARS, arrays()) if with_arrays else SCALARS
    keys = st.one_of(st.text(max_size=10), st.binary(max_size=10))
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(keys, children, max_size=4),
        ),
        max_leaves=12,
    )


PAYLOADS = payloads()

# --- messages ------------------------------------------------------------------------------------


def _for_annotation(annotation: Any, metadata: list[Any]) -> st.SearchStrategy[Any]:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (Union, types.UnionType):
        return st.one_of([_for_annotation(arg, metadata) for arg in args])
    if origin is Literal:
        return st.sampled_from(args)
    if origin is list:
        return st.lists(_for_annotation(args[0], []), max_size=4)
    if origin is dict:
        return st.dictionaries(st.text(max_size=10), _for_annotation(args[1], []), max_size=4)
    if annotation is type(None):
        return st.none()
    if annotation is Any:
        return PAYLOADS
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return st.sampled_from(list(annotation))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return model_instances(annotation)
    if annotation is bool:
        return st.booleans()
    if annotation is bytes:
        return st.binary(max_size=40)
    if annotation is bytes:
        return st.binary(max_size=20)
    if annotation is str:
        min_size = max([m.min_length for m in metadata if hasattr(m, "min_length")], default=0)
        return st.text(min_size=min_size, max_size=20)
    if annotation is int:
        lows = [cast(int, m.ge) for m in metadata if isinstance(m, annotated_types.Ge)]
        return st.integers(max(lows, default=-(2**63)), 2**63 - 1)
    if annotation is float:
        if any(isinstance(m, annotated_types.Gt) for m in metadata):
            return st.floats(min_value=0, exclude_min=True, allow_infinity=False)
        return st.floats()
    if annotation is datetime:
        return AWARE_DATETIMES
    raise NotImplementedError(f"no strategy for {annotation!r}")


def _field_dicts(cls: type[BaseModel], exclude: set[str]) -> st.SearchStrategy[dict[str, Any]]:
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in cls.model_fields.items():
        if name == "type" or name in exclude:
            continue
        if name == "protocol_version":
            strategy = st.sampled_from(["1.0", "1.1", "1.25"])
        else:
            strategy = _for_annotation(info.annotation, info.metadata)
        (required if info.is_required() else optional)[name] = strategy
    return st.fixed_dictionaries(required, optional=optional)


def _fa_request_rules() -> st.SearchStrategy[dict[str, Any]]:
    stats = st.lists(st.text(max_size=10), min_size=1, max_size=4)
    stats_args = st.dictionaries(st.text(max_size=10), PAYLOADS, min_size=1, max_size=3)
    schema = _for_annotation(FARequest.model_fields["dataset_schema"].annotation, [])
    return st.one_of(
        st.fixed_dictionaries({"stats": stats, "stats_args": st.none(), "dataset_schema": schema}),
        st.fixed_dictionaries(
            {"stats": st.none(), "stats_args": stats_args, "dataset_schema": st.none()}
        ),
    )


def _fa_reply_rules() -> st.SearchStrategy[dict[str, Any]]:
    output = st.dictionaries(st.text(max_size=10), PAYLOADS, max_size=4)
    lists = st.lists(PAYLOADS, max_size=4)
    plain = {"encrypted": st.just(False), "output": output}
    encrypted = {
        "encrypted": st.just(True),
        "params_encrypted": lists,
        "output_schema": lists,
    }
    return st.one_of(st.fixed_dictionaries(plain), st.fixed_dictionaries(encrypted))


_CROSS_FIELD_RULES = {
    FARequest: ({"stats", "stats_args", "dataset_schema"}, _fa_request_rules),
    FAReply: ({"encrypted", "output", "params_encrypted", "output_schema"}, _fa_reply_rules),
}


def model_instances(cls: type[BaseModel]) -> st.SearchStrategy[Any]:
    """Valid instances of ``cls``, with optional fields sometimes left at their defaults."""
    ruled, rules = _CROSS_FIELD_RULES.get(cls, (set(), lambda: st.just({})))
    return st.tuples(_field_dicts(cls, exclude=ruled), rules()).map(
        lambda pair: cls(**pair[0], **pair[1])
    )


# --- equality ------------------------------------------------------------------------------------


def same(a: Any, b: Any) -> bool:
    """Deep equality: arrays by dtype, shape, values (``numpy.array_equal``) and bytes, NaN
    equal to NaN, datetimes by instant; scalars must keep their type (1 is not 1.0 nor True)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return False
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        if a.dtype.kind in "biufc" and not np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"):
            return False
        return a.tobytes() == b.tobytes()
    if isinstance(a, BaseModel):
        return type(a) is type(b) and same(dict(a), dict(b))
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if isinstance(a, datetime):
        return isinstance(b, datetime) and b.tzinfo is not None and a == b
    return type(a) is type(b) and a == b
