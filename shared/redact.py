"""Keep passwords out of messages and logs.

- redact_url(url): the URL with its password masked: redis://:secret@h:6379/0 -> redis://:***@h:6379/0,
  rediss://user:pw@h/0 -> rediss://user:***@h/0 (a user part without a colon, redis://secret@h/0,
  may be a password too and is masked whole: redis://***@h/0); a `password=` query value is masked too.
- redact(text, *secrets): free text (an exception message, a log line) with every URL that carries
  credentials redacted as above (and those passwords masked wherever else the text repeats them),
  and every given secret string masked. A secret that is itself a URL stands for its password (as
  written and percent-decoded), so `redact(message, url)` hides that URL's password wherever the
  message repeats it.

The user info of a URL runs from `://` to the last `@` of the URL (a password may hold `/`, `?`, `#`
or `@` written as is): this may mask more than the user info of an odd URL, never less."""
from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"

# scheme://  then the rest of the URL up to white space, a quote or an angle bracket
# A URL runs to the next space or quote, or to a ";" that starts the next URL of a list (the
# sentinel://H1;sentinel://H2 broker URL of Redis Sentinel).
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>(?:(?!;[A-Za-z][A-Za-z0-9+.\-]*://)[^\s'\"<>`])*)")
_QUERY_SECRET = re.compile(r"(?P<key>[?&;](?:password|pass|passwd|ssl_password)=)(?P<value>[^&;#\s'\"<>`]*)",
                           re.IGNORECASE)


def _split_userinfo(rest: str) -> tuple[str, str]:
    """(user info, everything after its '@'); user info '' when the URL has none."""
    userinfo, at, after = rest.rpartition("@")
    return (userinfo, after) if at else ("", rest)


def _mask_userinfo(userinfo: str) -> str:
    user, colon, password = userinfo.partition(":")
    if not colon:
        return MASK if user else ""
    return f"{user}:{MASK}" if password else userinfo


def _mask_query(text: str) -> str:
    return _QUERY_SECRET.sub(lambda m: m.group("key") + (MASK if m.group("value") else ""), text)


def _redact_match(match: re.Match[str]) -> str:
    userinfo, after = _split_userinfo(match.group("rest"))
    if not userinfo:
        return match.group("scheme") + _mask_query(after)
    return f"{match.group('scheme')}{_mask_userinfo(userinfo)}@{_mask_query(after)}"


def redact_url(url: str) -> str:
    """`url` with its password (or a bare user part, which may be one) replaced by ***."""
    if not url:
        return url
    return _URL.sub(_redact_match, url)


def url_secrets(url: str) -> list[str]:
    """The password of `url` (or its bare user part) as written and percent-decoded; [] if none."""
    match = _URL.search(url or "")
    if not match:
        return []
    userinfo, _ = _split_userinfo(match.group("rest"))
    user, colon, password = userinfo.partition(":")
    secret = password if colon else user
    found = [secret, unquote(secret)] if secret else []
    for query in _QUERY_SECRET.finditer(match.group("rest")):
        if query.group("value"):
            found += [query.group("value"), unquote(query.group("value"))]
    return found


def redact(text: object, *secrets: str | None) -> str:
    """str(text) with credentials in URLs masked, and each secret (None and '' are skipped; a URL
    stands for its password) replaced by *** wherever it occurs."""
    text = str(text)
    strings: set[str] = set()
    for match in _URL.finditer(text):   # a password seen in a URL is hidden elsewhere in the text too
        strings.update(url_secrets(match.group(0)))
    result = _URL.sub(_redact_match, text)
    for secret in secrets:
        if not secret:
            continue
        if "://" in secret:
            strings.update(url_secrets(secret))
        else:
            strings.add(secret)
    for secret in sorted(filter(None, strings), key=len, reverse=True):   # longest first
        result = result.replace(secret, MASK)
    return result
