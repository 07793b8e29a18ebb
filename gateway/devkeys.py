"""Development keys: generated once into ``VOICEGW_DATA_DIR`` so the embedded defaults can
verify webhooks that ``voicegw simulate`` / ``voicegw demo`` sign.

Every generated secret starts with ``DEV_SECRET_PREFIX`` (or, for the Telnyx key pair, is
recorded in ``dev-keys.json``), which is how production mode recognises and refuses them.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from gateway.settings import DEV_KEYS_FILE, DEV_SECRET_PREFIX, Settings
from security.secret import Secret

FILENAME = DEV_KEYS_FILE


@dataclass(frozen=True, slots=True)
class DevKeys:
    twilio_auth_token: str
    telnyx_signing_seed: str  # base64 Ed25519 seed
    telnyx_public_key: str  # base64 Ed25519 public key

    def telnyx_signing_key(self) -> SigningKey:
        return SigningKey(base64.b64decode(self.telnyx_signing_seed))


def ensure_data_dir(path: Path) -> None:
    """Create the data directory readable by its owner only."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def load_or_create(data_dir: Path) -> DevKeys:
    """Return the development keys in ``data_dir``, generating them (mode 0600) on first use."""
    ensure_data_dir(data_dir)
    path = data_dir / FILENAME
    if path.exists():
        return DevKeys(**json.loads(path.read_text()))
    signing = SigningKey.generate()
    keys = DevKeys(
        twilio_auth_token=DEV_SECRET_PREFIX + secrets.token_hex(16),
        telnyx_signing_seed=base64.b64encode(bytes(signing)).decode(),
        telnyx_public_key=base64.b64encode(bytes(signing.verify_key)).decode(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dataclasses.asdict(keys), f)
    return keys


def apply(settings: Settings) -> Settings:
    """In development, fill unset carrier secrets with the development keys."""
    if settings.production:
        return settings
    needs_twilio = "twilio" in settings.carriers and settings.twilio_auth_token is None
    needs_telnyx = "telnyx" in settings.carriers and not settings.telnyx_public_keys
    if not (needs_twilio or needs_telnyx):
        return settings
    keys = load_or_create(settings.data_dir)
    return dataclasses.replace(
        settings,
        twilio_auth_token=Secret(keys.twilio_auth_token)
        if needs_twilio
        else settings.twilio_auth_token,
        telnyx_public_keys=(keys.telnyx_public_key,)
        if needs_telnyx
        else settings.telnyx_public_keys,
    )
