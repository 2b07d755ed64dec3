"""What `ltrec serve` checks and says about who can reach it: the API key's form, and a warning when the
address it listens on is reachable from other machines. The server has no TLS of its own."""

from __future__ import annotations

import ipaddress

from ltrec.files.errors import UserError

KEY_ENV = "LTREC_API_KEY"
SHORT_KEY = 16  # characters; below this a key can be guessed, or read over a shoulder
MAKE_KEY = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def check_key(key: str | None) -> tuple[str | None, list[str]]:
    """(the key or None, warnings to print). A bad key is a UserError whose message never holds it."""
    if key is None:
        return None, []
    if not key:
        raise UserError(
            f"--api-key / {KEY_ENV}: the key is empty; give one (e.g. {MAKE_KEY}), or unset "
            f"{KEY_ENV} to serve without a key"
        )
    if not all("!" <= c <= "~" for c in key):  # what a header value carries unchanged: visible ASCII
        raise UserError(
            f"--api-key / {KEY_ENV}: the key may hold visible ASCII characters only (no spaces, "
            f"line breaks or accents); e.g. {MAKE_KEY}"
        )
    if len(key) < SHORT_KEY:
        note = (
            f"warning: the API key has only {len(key)} characters; a random one of 32 or more ({MAKE_KEY}) "
            "cannot be guessed"
        )
        return key, [note]
    return key, []


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:  # not an address: the name of some interface, so assume others can reach it
        return False


def exposure_warning(address: str, key: str | None) -> str | None:
    """A line for stderr when `address` (as bound) can be reached from other machines, else None."""
    if is_loopback(address):
        return None
    if key is None:
        return (
            f"warning: listening on {address}, which other machines can reach, with no authentication and no "
            "TLS: anyone who can connect can query the model; put ltrec serve behind a reverse proxy with "
            f"TLS, or pass --api-key (or set {KEY_ENV})"
        )
    return (
        f"warning: listening on {address} without TLS: the API key and every request cross the network in "
        "clear text; put ltrec serve behind a reverse proxy with TLS"
    )
