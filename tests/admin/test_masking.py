"""PII masking rules and the escaped JSON rendering (no Flask, no database)."""

from __future__ import annotations

import pytest

from webhooks_app.admin.jsonhtml import highlight
from webhooks_app.masking import (
    MASK,
    MaskRules,
    PointerError,
    display_headers,
    mask,
    to_pointer,
    value_at,
)

PAYLOAD = {
    "event": "chat.completion",
    "data": {
        "id": "chat_1",
        "user": {"email": "ann@example.com", "name": "Ann"},
        "messages": [
            {"role": "user", "content": "hello"},
            {"role": "assistant", "content": {"parts": ["hi"]}},
        ],
    },
}


def test_a_bare_name_masks_that_key_at_any_depth() -> None:
    result = mask(PAYLOAD, MaskRules.parse(["email", "content"]))
    assert result.value["data"]["user"] == {"email": MASK, "name": "Ann"}
    assert result.value["data"]["messages"][0] == {"role": "user", "content": MASK}
    assert result.value["data"]["messages"][1]["content"] == MASK  # whole subtree
    assert set(result.pointers) == {
        "/data/user/email",
        "/data/messages/0/content",
        "/data/messages/1/content",
    }
    assert PAYLOAD["data"]["user"]["email"] == "ann@example.com"  # input untouched


def test_a_dotted_path_masks_from_the_root_with_wildcards() -> None:
    rules = MaskRules.parse(["data.messages.*.role", "data.user"])
    result = mask(PAYLOAD, rules)
    assert [m["role"] for m in result.value["data"]["messages"]] == [MASK, MASK]
    assert result.value["data"]["user"] == MASK
    assert result.value["data"]["messages"][0]["content"] == "hello"
    assert mask({"role": "x"}, rules).pointers == ()  # not at that path


def test_kept_fields_stay_visible() -> None:
    rules = MaskRules.parse(["content"])
    result = mask(PAYLOAD, rules, keep=frozenset({"/data/messages/0/content"}))
    assert result.value["data"]["messages"][0]["content"] == "hello"
    assert result.pointers == ("/data/messages/1/content",)


def test_no_rules_mask_nothing() -> None:
    assert mask(PAYLOAD, MaskRules.parse([])).value == PAYLOAD
    assert mask(PAYLOAD, MaskRules.parse(["", " "])).pointers == ()


def test_pointers_escape_and_resolve() -> None:
    weird = {"a/b": {"~c": [10, 20]}}
    pointer = to_pointer(("a/b", "~c", "1"))
    assert pointer == "/a~1b/~0c/1"
    assert value_at(weird, pointer) == 20
    for bad in ("a/b", "/missing", "/a~1b/~0c/5", "/a~1b/~0c/x"):
        with pytest.raises(PointerError):
            value_at(weird, bad)


def test_signatures_are_truncated_for_display() -> None:
    shown = dict(
        display_headers(
            {"webhook-signature": "v1,abcdefghijklmnopqrstuvwxyz v1a,0123456789abcdef", "x": "1"}
        )
    )
    assert shown["webhook-signature"] == "v1,abcdefghi… v1a,01234567…"
    assert shown["x"] == "1"


def test_highlighted_json_escapes_every_text() -> None:
    html = str(highlight({"<b>key</b>": ["<script>alert(1)</script>", 1, True, None]}))
    assert "<script>" not in html
    assert "<b>" not in html
    assert '<span class="j-key">&#34;&lt;b&gt;key&lt;/b&gt;&#34;</span>' in html
    assert '<span class="j-num">1</span>' in html
    assert '<span class="j-lit">true</span>' in html
    assert '<span class="j-lit">null</span>' in html


def test_masked_values_get_a_reveal_button() -> None:
    masked = mask(PAYLOAD, MaskRules.parse(["email"]))
    html = str(highlight(masked.value, masked=frozenset(masked.pointers), reveal_form="rf"))
    assert 'form="rf" name="pointer" value="/data/user/email"' in html
    assert "ann@example.com" not in html
    # A payload that happens to contain the mask text itself is not offered for revealing.
    assert "button" not in str(highlight({"note": MASK}, masked=frozenset(), reveal_form="rf"))
