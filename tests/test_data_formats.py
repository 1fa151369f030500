"""Dataset rows of every common format become conversations; bad rows name row and field."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from galley.core import Conversation, DataError, GalleyError
from galley.core.domain.data_formats import row_to_conversation


def conv(row: Any) -> Conversation:
    return row_to_conversation(row, source="data.jsonl", index=7)


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            [("user", "q"), ("assistant", "a")],
        ),
        ({"prompt": "q", "completion": "a"}, [("user", "q"), ("assistant", "a")]),
        (
            {"instruction": "do", "input": "this", "response": "done"},
            [("user", "do\n\nthis"), ("assistant", "done")],
        ),
        (
            {"input": "q", "output": "a", "system": "s"},
            [("system", "s"), ("user", "q"), ("assistant", "a")],
        ),
    ],
)
def test_formats(row: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert [(m.role, m.content) for m in conv(row).messages] == expected


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        ({"messages": []}, "messages", "empty conversation"),
        ({"messages": "hi"}, "messages", "expected a list"),
        ({"messages": [{"role": "user"}]}, r"messages\[0\].content", "missing"),
        (
            {"messages": [{"role": "wizard", "content": "x"}]},
            r"messages\[0\].role",
            "unknown role 'wizard'",
        ),
        (
            {"messages": [{"role": "user", "content": 5}]},
            r"messages\[0\].content",
            "expected a string",
        ),
        ({"prompt": "q"}, "completion", "missing"),
        ({"prompt": 1, "completion": "a"}, "prompt", "expected a string"),
        ({"text": "free text"}, "<row>", "no known format"),
        (["not", "an", "object"], "<row>", "expected an object"),
    ],
)
def test_malformed_rows_name_file_row_and_field(row: Any, field: str, message: str) -> None:
    with pytest.raises(
        DataError, match=rf"data.jsonl, row 8, field '{field}': .*{message}"
    ) as info:
        conv(row)
    assert info.value.row == 7


junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["messages", "role", "content", "prompt", "completion", "x"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=10,
)


@given(junk)
def test_junk_rows_raise_only_galley_errors(row: Any) -> None:
    with contextlib.suppress(GalleyError):
        conv(row)
