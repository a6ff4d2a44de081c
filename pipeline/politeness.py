"""Rules a polite, safe fetcher obeys: robots.txt, X-Robots-Tag opt-outs, and no private addresses by default."""

import ipaddress
import socket
import urllib.robotparser
from urllib.parse import urlsplit, urlunsplit

USER_AGENT_TOKEN = "wit-builder"
USER_AGENT = f"{USER_AGENT_TOKEN}/0.1 (image-text dataset research; obeys robots.txt and X-Robots-Tag noai)"
# What img2dataset honours by default, plus "none" (which implies noindex); see its --disallowed_header_directives.
DEFAULT_DISALLOWED_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex", "none"})
# Directives that take a value after a colon; "unavailable_after: <date>" is not a user-agent prefix.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})


def x_robots_opt_out(
    header_values: list[str],
    user_agent_token: str = USER_AGENT_TOKEN,
    disallowed: frozenset[str] = DEFAULT_DISALLOWED_DIRECTIVES,
) -> str | None:
    """The first disallowed X-Robots-Tag directive that applies to us, or None.

    A value is either "noai, noindex" (applies to every agent) or "somebot: noai" (applies to that agent
    only); several headers may be present. Matching of agent and directive is case-insensitive.
    """
    ua = user_agent_token.lower()
    for value in header_values:
        value = value.strip()
        head, sep, rest = value.partition(":")
        scoped = sep and head.strip().lower() not in _VALUED_DIRECTIVES and "," not in head
        if scoped:
            if head.strip().lower() != ua:
                continue
            value = rest
        for directive in value.split(","):
            name = directive.strip().lower()
            if name in disallowed:
                return name
    return None


def robots_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/robots.txt", "", ""))


def parse_robots(text: str) -> urllib.robotparser.RobotFileParser:
    parser = urllib.robotparser.RobotFileParser()
    parser.parse(text.splitlines())
    return parser


def robots_for_status(status: int, text: str = "") -> urllib.robotparser.RobotFileParser:
    """robots.txt rules by fetch outcome (RFC 9309): 4xx means no rules, 5xx or unreachable means none allowed."""
    parser = urllib.robotparser.RobotFileParser()
    if 200 <= status < 300:
        parser.parse(text.splitlines())
    elif 400 <= status < 500:
        parser.allow_all = True
    else:
        parser.disallow_all = True
    return parser


def is_public_address(ip: str) -> bool:
    """False for loopback, private, link-local, multicast, reserved and unspecified addresses (v4 and v6)."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


def resolves_public(host: str, port: int = 80) -> tuple[bool, str]:
    """Whether every address `host` resolves to is public; (False, why) otherwise.

    Every address is checked because a name can resolve to a public and a private address at once.
    """
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as e:
        return False, f"cannot resolve {host}: {e}"
    for info in infos:
        ip = info[4][0]
        if not is_public_address(ip):
            return False, f"{host} resolves to {ip}"
    return True, ""
