"""Rules a polite, safe fetcher obeys: robots.txt, X-Robots-Tag opt-outs, and no private addresses by default."""

import ipaddress
import socket
import urllib.robotparser
from urllib.parse import urlsplit, urlunsplit

USER_AGENT_TOKEN = "wit-builder"
USER_AGENT = f"{USER_AGENT_TOKEN}/0.1 (image-text dataset research; obeys robots.txt and X-Robots-Tag noai)"


def user_agent(token: str = USER_AGENT_TOKEN, contact: str | None = None) -> str:
    """An identifiable User-Agent: the token robots.txt and X-Robots-Tag rules name, and how to reach the operator."""
    return f"{token}/0.1 (image-text dataset research; obeys robots.txt and X-Robots-Tag noai" + (
        f"; +{contact})" if contact else ")"
    )


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


def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (socket.gaierror or UnicodeError if none); IP literals in any spelling
    the C library accepts (2130706433, 0x7f000001, 127.1) come back in canonical form, so they are judged too."""
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)})


def private_allowed(ip: str, port: int, allowlist: tuple[str, ...]) -> bool:
    """Whether a non-public address is opened by the allowlist: entries are a CIDR or an IP (any port), or
    IP:PORT (that port only), e.g. ("127.0.0.1:8000", "10.0.0.0/8")."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    for entry in allowlist:
        net, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and (not entry_port.isdigit() or int(entry_port) != port):
            continue
        try:
            if addr in ipaddress.ip_network(net, strict=False):
                return True
        except ValueError:
            continue
    return False


def validate_allowlist(allowlist: tuple[str, ...]) -> None:
    for entry in allowlist:
        net, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ValueError(f"--allow-private entry {entry!r} is not a CIDR, an IP or IP:PORT") from None
        if port and not port.isdigit():
            raise ValueError(f"--allow-private entry {entry!r} has a bad port")


def parse_optout_list(text: str) -> tuple[str, ...]:
    """The entries of an opt-out list file (`--optout-list`): one domain or URL prefix a line, `#` lines comments."""
    return tuple(entry for line in text.splitlines() if (entry := line.strip()) and not entry.startswith("#"))


def optout_match(url: str, optout: tuple[str, ...]) -> str | None:
    """The opt-out entry covering `url`: a domain (covering its subdomains) or a URL prefix; None if none does."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    for entry in optout:
        e = entry.strip().lower()
        if "://" in e:
            if url.lower().startswith(e):
                return entry
        elif e and (host == e or host.endswith("." + e)):
            return entry
    return None
