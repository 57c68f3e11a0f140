import pytest

from datamodules.action_parser import parse_action


@pytest.mark.parametrize(
    ("response", "action", "ok"),
    [
        ("<action> take red key </action>", "take red key", True),
        ("<think>keys open chests</think> <action>Open   Chest</action> trailing", "open chest", True),
        ("<action>go north</action><action>go south</action>", "go north", True),
        ("take red key", "", False),
        ("<action></action>", "", False),
        ("<action> 拿钥匙 </action>", "", False),
        ("<action> take key", "", False),
        ("", "", False),
        ("\x00\x01 <<<>>> " * 50, "", False),
    ],
)
def test_parse_action(response: str, action: str, ok: bool) -> None:
    parsed = parse_action(response)
    assert (parsed.action, parsed.ok) == (action, ok)


def test_require_think_rejects_a_bare_action() -> None:
    assert not parse_action("<action>look</action>", require_think=True).ok
    assert parse_action("<think>x</think><action>look</action>", require_think=True).action == "look"
