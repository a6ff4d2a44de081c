"""Politeness rules: X-Robots-Tag scoping, robots.txt outcomes, private-address refusal."""

import pytest

from pipeline.fetch.politeness import (
    USER_AGENT_TOKEN,
    is_public_address,
    optout_match,
    parse_optout_list,
    parse_robots,
    private_allowed,
    resolve,
    robots_for_status,
    robots_url,
    user_agent,
    validate_allowlist,
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


def test_odd_ip_spellings_resolve_to_loopback():
    for host in ("localhost", "2130706433", "0x7f000001", "127.1", "127.0.0.1"):
        assert any(not is_public_address(ip) for ip in resolve(host, 80)), host


@pytest.mark.parametrize(
    ("ip", "port", "allowlist", "allowed"),
    [
        ("127.0.0.1", 8000, (), False),
        ("127.0.0.1", 8000, ("127.0.0.1",), True),
        ("127.0.0.1", 8000, ("127.0.0.0/8",), True),
        ("127.0.0.1", 8000, ("127.0.0.1:8000",), True),
        ("127.0.0.1", 8001, ("127.0.0.1:8000",), False),
        ("10.2.3.4", 80, ("127.0.0.0/8",), False),
        ("::ffff:127.0.0.1", 80, ("127.0.0.1",), True),
        ("::1", 80, ("::1",), True),
    ],
)
def test_private_allowlist(ip, port, allowlist, allowed):
    assert private_allowed(ip, port, allowlist) is allowed


def test_allowlist_validation():
    validate_allowlist(("127.0.0.1", "10.0.0.0/8", "127.0.0.1:8080", "::1"))
    with pytest.raises(ValueError, match="not a CIDR"):
        validate_allowlist(("example.com",))


def test_optout_list():
    optout = ("Example.com", "https://photos.net/private/")
    assert optout_match("http://img.example.com/a.jpg", optout) == "Example.com"
    assert optout_match("https://photos.net/private/x.jpg", optout) == "https://photos.net/private/"
    assert optout_match("https://photos.net/public/x.jpg", optout) is None
    assert optout_match("http://notexample.com/a.jpg", optout) is None


def test_optout_list_file():
    text = "# owners who asked\nExample.com\n\n  https://photos.net/private/  \n  # an indented comment\n"
    assert parse_optout_list(text) == ("Example.com", "https://photos.net/private/")
    assert parse_optout_list("") == ()


def test_user_agent_names_token_and_contact():
    ua = user_agent("mybot", "mailto:data@example.org")
    assert ua.startswith("mybot/") and "+mailto:data@example.org" in ua
