"""How a database URL is shown: with its password masked (banners, logs, errors)."""

from __future__ import annotations

from urllib.parse import urlsplit


def display_url(url: str) -> str:
    """The database URL with its password masked, for banners and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
