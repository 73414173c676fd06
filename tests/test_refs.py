"""Template references: parsing, walking and resolving `{{ ... }}` in args and map.over."""

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowforge.domain import refs

PARAMS = {"env": "prod", "limits": {"rows": 10}, "ids": [3, 4]}
OUTPUTS = {"a": {"count": 2, "path": "s3://x"}, "b": [{"k": "v"}, 7], "n": None}


def resolve(value, item=refs.MISSING):
    return refs.resolve(value, params=PARAMS, outputs=OUTPUTS, item=item)


@pytest.mark.parametrize(
    ("text", "kind", "task", "path"),
    [
        ("{{ params.x }}", "params", None, ("x",)),
        ("{{params.x.y}}", "params", None, ("x", "y")),
        ("{{ tasks.a.output }}", "tasks", "a", ()),
        ("{{  tasks.a.output.key }}", "tasks", "a", ("key",)),
        ("{{ tasks.load-2.output.0 }}", "tasks", "load-2", ("0",)),
        ("{{ item }}", "item", None, ()),
        ("{{ item.key }}", "item", None, ("key",)),
    ],
)
def test_references_parse_each_form(text, kind, task, path):
    [ref] = refs.references(text)
    assert (ref.kind, ref.task, ref.path) == (kind, task, path)
    # The text is normalised, so messages look the same whatever the spacing.
    assert ref.text == "{{ " + text.strip("{} ") + " }}"


def test_references_walk_lists_and_mapping_values_not_keys():
    value = {
        "{{ params.key_is_not_a_ref }}": ["{{ params.x }}", {"deep": "a {{ tasks.a.output }} b"}],
        "n": 3,
        "t": ("{{ item }}",),
    }
    found = refs.references(value)
    assert [r.text for r in found] == [
        "{{ params.x }}",
        "{{ tasks.a.output }}",
        "{{ item }}",
    ]


def test_two_references_in_one_string():
    found = refs.references("{{ params.a }}-{{ params.b }}")
    assert [r.path for r in found] == [("a",), ("b",)]
    assert refs.single("{{ params.a }}-{{ params.b }}") is None
    assert refs.single("{{ params.a }} x }}") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{{ tasks.a }}", "tasks.a.output"),
        ("{{ foo }}", "unknown name 'foo'"),
        ("{{ tasks.a.status }}", "status can only be tested in `when`"),
        ("{{ tasks.a.result }}", "unknown field 'result'"),
        ("{{ }}", "empty reference"),
        ("{{}}", "empty reference"),
        ("{{ params }}", "name a parameter"),
        ("{{ params.a b }}", "bad path segment"),
        ("{{ params..a }}", "bad path segment ''"),
        ("x {{ params.a", "unclosed"),
    ],
)
def test_malformed_references_raise(text, expected):
    with pytest.raises(refs.RefError, match=re.escape(expected)):
        refs.references({"k": [text]})


def test_exact_reference_becomes_the_value_itself():
    assert resolve("{{ tasks.a.output }}") == {"count": 2, "path": "s3://x"}
    assert resolve("  {{ tasks.a.output.count }}\n") == 2
    assert resolve("{{ tasks.b.output.0.k }}") == "v"
    assert resolve("{{ params.ids }}") == [3, 4]
    assert resolve("{{ tasks.n.output }}") is None
    assert resolve("{{ item.x }}", item={"x": [1]}) == [1]


def test_embedded_references_are_interpolated_as_compact_json():
    assert resolve("env={{ params.env }}") == "env=prod"
    assert resolve("l={{ params.limits }};i={{ params.ids }}") == 'l={"rows":10};i=[3,4]'
    assert resolve("n={{ tasks.n.output }} c={{tasks.a.output.count}}") == "n=null c=2"
    assert resolve("{{ item }}!", item=True) == "true!"


def test_resolve_recurses_into_values_not_keys_and_leaves_input_alone():
    value = {"{{ params.env }}": ["{{ params.env }}", {"x": "{{ tasks.a.output.count }}"}], "n": 1}
    before = json.dumps(value)
    assert resolve(value) == {"{{ params.env }}": ["prod", {"x": 2}], "n": 1}
    assert json.dumps(value) == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ tasks.a.output.rows }}", "{{ tasks.a.output.rows }}: task 'a' output has no key 'rows' (keys: count, path)"),
        ("{{ tasks.z.output }}", "{{ tasks.z.output }}: task 'z' has no output"),
        ("{{ params.nope }}", "{{ params.nope }}: params has no key 'nope' (keys: env, ids, limits)"),
        ("{{ params.ids.5 }}", "{{ params.ids.5 }}: params.ids has no index 5 (it has 2 items)"),
        ("{{ params.ids.x }}", "{{ params.ids.x }}: params.ids is a list; 'x' is not a list index"),
        ("{{ params.env.x }}", "{{ params.env.x }}: params.env is a str value, it has no key 'x'"),
        ("{{ tasks.b.output.0.q }}", "{{ tasks.b.output.0.q }}: task 'b' output.0 has no key 'q' (keys: k)"),
        ("{{ item }}", "{{ item }}: there is no current item"),
    ],
)
def test_missing_values_name_the_reference_and_what_is_missing(text, message):
    with pytest.raises(refs.RefError) as err:
        resolve(["ok", {"k": text}])
    assert str(err.value).startswith(message)


# A JSON-like value, and a path through it that exists.
json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
keys = st.from_regex(r"[A-Za-z0-9_-]{1,6}", fullmatch=True)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=20,
)


@st.composite
def value_and_path(draw):
    root = draw(json_values)
    path, current = [], root
    while draw(st.booleans()):
        if isinstance(current, dict) and current:
            key = draw(st.sampled_from(sorted(current)))
        elif isinstance(current, list) and current:
            key = draw(st.integers(0, len(current) - 1))
        else:
            break
        path.append(str(key))
        current = current[key]
    return root, tuple(path), current


@given(value_and_path(), st.sampled_from(["params", "tasks", "item"]))
def test_resolve_finds_the_value_at_any_path(case, kind):
    root, path, expected = case
    head = {"params": "params.p", "tasks": "tasks.t.output", "item": "item"}[kind]
    text = "{{ " + ".".join((head, *path)) + " }}"
    got = refs.resolve(text, params={"p": root}, outputs={"t": root}, item=root)
    assert got == expected
    [ref] = refs.references(text)
    assert ref.path == (("p",) if kind == "params" else ()) + path
    embedded = refs.resolve(f"<{text}>", params={"p": root}, outputs={"t": root}, item=root)
    shown = expected if isinstance(expected, str) else json.dumps(expected, separators=(",", ":"))
    assert embedded == f"<{shown}>"


@given(json_values)
def test_values_without_references_resolve_to_themselves(value):
    if "{{" in json.dumps(value):
        return
    assert refs.references(value) == []
    assert refs.resolve(value, params={}, outputs={}) == value
