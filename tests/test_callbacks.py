"""Signed callback URLs: shape, and which signatures ``verify`` accepts."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest

from engine.signing import CallbackSigner

TOKEN = "waitpoint_01jz3k4m5n6p7q8r9s0t1v2w3x"
OTHER = "waitpoint_01jz3k4m5n6p7q8r9s0t1v2w3y"


@pytest.fixture
def signer() -> CallbackSigner:
    return CallbackSigner("https://hooks.example.com", "s3cret")


def test_signature_is_hmac_sha256_of_token_id_as_lowercase_hex(signer: CallbackSigner) -> None:
    expected = hmac.new(b"s3cret", TOKEN.encode(), hashlib.sha256).hexdigest()
    assert signer.signature(TOKEN) == expected
    assert re.fullmatch(r"[0-9a-f]{64}", expected)


def test_url_shape(signer: CallbackSigner) -> None:
    assert signer.url(TOKEN) == (
        f"https://hooks.example.com/api/v1/waitpoints/tokens/{TOKEN}/callback/"
        f"{signer.signature(TOKEN)}"
    )


@pytest.mark.parametrize("base", ["http://127.0.0.1:8030/", "http://127.0.0.1:8030//"])
def test_url_strips_trailing_slashes_from_public_url(base: str) -> None:
    url = CallbackSigner(base, "k").url(TOKEN)
    assert url.startswith("http://127.0.0.1:8030/api/v1/waitpoints/tokens/")
    assert "//api" not in url


def test_url_keeps_a_path_prefix_of_public_url() -> None:
    url = CallbackSigner("https://example.com/waitpoint/", "k").url(TOKEN)
    assert url.startswith("https://example.com/waitpoint/api/v1/waitpoints/tokens/")


def test_verify_accepts_the_right_signature(signer: CallbackSigner) -> None:
    assert signer.verify(TOKEN, signer.signature(TOKEN))


def test_verify_accepts_signature_taken_from_the_url(signer: CallbackSigner) -> None:
    assert signer.verify(TOKEN, signer.url(TOKEN).rsplit("/", 1)[1])


def test_verify_rejects_tampered_signature(signer: CallbackSigner) -> None:
    sig = signer.signature(TOKEN)
    flipped = sig[:10] + ("0" if sig[10] != "0" else "1") + sig[11:]
    assert not signer.verify(TOKEN, flipped)


def test_verify_rejects_truncated_and_extended_signature(signer: CallbackSigner) -> None:
    sig = signer.signature(TOKEN)
    assert not signer.verify(TOKEN, sig[:-1])
    assert not signer.verify(TOKEN, sig[:32])
    assert not signer.verify(TOKEN, "")
    assert not signer.verify(TOKEN, sig + "0")
    assert not signer.verify(TOKEN, sig + "\n")


def test_verify_rejects_uppercase_hex(signer: CallbackSigner) -> None:
    sig = signer.signature(TOKEN)
    assert sig != sig.upper()
    assert not signer.verify(TOKEN, sig.upper())


def test_verify_rejects_another_tokens_signature(signer: CallbackSigner) -> None:
    assert signer.signature(OTHER) != signer.signature(TOKEN)
    assert not signer.verify(TOKEN, signer.signature(OTHER))


def test_verify_rejects_signature_under_another_secret(signer: CallbackSigner) -> None:
    foreign = CallbackSigner("https://hooks.example.com", "other").signature(TOKEN)
    assert not signer.verify(TOKEN, foreign)


@pytest.mark.parametrize(
    "bad",
    ["g" * 64, "z" * 64, " " + "a" * 63, "é" * 64, "0x" + "a" * 62, "a" * 63 + "\u0660"],
)
def test_verify_rejects_non_hex_without_raising(signer: CallbackSigner, bad: str) -> None:
    assert not signer.verify(TOKEN, bad)


def test_same_secret_gives_same_signature_across_signers() -> None:
    one = CallbackSigner("http://a", "k").signature(TOKEN)
    two = CallbackSigner("http://b", "k").signature(TOKEN)
    assert one == two
