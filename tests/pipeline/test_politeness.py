"""Politeness rules: X-Robots-Tag scoping, robots.txt outcomes, private-address refusal."""

import pytest

from pipeline.politeness import (
    USER_AGENT_TOKEN,
    is_public_address,
    parse_robots,
    resolves_public,
    robots_for_status,
    robots_url,
    x_robots_opt_out,
)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        (["noai"], "noai"),
        (["NoImageAI"], "noimageai"),
        (["noindex, nofollow"], "noindex"),
        (["none"], "none"),
        (["nofollow", "noarchive"], None),
        (["otherbot: noai"], None),  # scoped to another agent
        ([f"{USER_AGENT_TOKEN}: noai"], "noai"),
        ([f"{USER_AGENT_TOKEN.upper()}: noimageai, nofollow"], "noimageai"),
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], None),  # a valued directive, not an agent prefix
        (["otherbot: noai", "noindex"], "noindex"),
    ],
)
def test_x_robots_tag(headers, expected):
    assert x_robots_opt_out(headers) == expected


def test_x_robots_tag_custom_directive_set():
    assert x_robots_opt_out(["noindex"], disallowed=frozenset({"noai"})) is None


def test_robots_txt_rules():
    rules = parse_robots("User-agent: *\nDisallow: /private/\n\nUser-agent: wit-builder\nDisallow: /nowit/\n")
    assert rules.can_fetch(USER_AGENT_TOKEN, "http://h/img/a.jpg")
    assert not rules.can_fetch(USER_AGENT_TOKEN, "http://h/nowit/a.jpg")
    assert not rules.can_fetch("otherbot", "http://h/private/a.jpg")
    assert robots_url("http://h:8080/a/b.jpg?x=1#f") == "http://h:8080/robots.txt"


def test_robots_by_fetch_status():
    assert robots_for_status(404).can_fetch(USER_AGENT_TOKEN, "http://h/x")
    assert not robots_for_status(503).can_fetch(USER_AGENT_TOKEN, "http://h/x")
    assert not robots_for_status(200, "User-agent: *\nDisallow: /\n").can_fetch(USER_AGENT_TOKEN, "http://h/x")


@pytest.mark.parametrize(
    ("ip", "public"),
    [
        ("8.8.8.8", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata endpoint
        ("0.0.0.0", False),
        ("::1", False),
        ("fe80::1", False),
        ("::ffff:127.0.0.1", False),
        ("2001:4860:4860::8888", True),
        ("224.0.0.1", False),
    ],
)
def test_public_addresses(ip, public):
    assert is_public_address(ip) is public


def test_localhost_does_not_resolve_public():
    ok, why = resolves_public("localhost")
    assert not ok
    assert "127.0.0.1" in why or "::1" in why
