"""Admin keys: the config holds only their sha256; a request shows the key itself.

`Authorization: Bearer <key>` or `X-Admin-Key: <key>`. The name of the matching
key is who the audit log says made the change.
"""

from __future__ import annotations

import hashlib
import hmac

from surge.config import AdminKey
from surge.core.errors import SurgeError


class AdminAuth:
    def __init__(self, keys: list[AdminKey]) -> None:
        self._keys = [(k.name, bytes.fromhex(k.sha256)) for k in keys]

    def authenticate(self, authorization: str | None, admin_key: str | None) -> str:
        """The key's name, or a 401/403 that says what to send."""
        if not self._keys:
            raise SurgeError(
                "admin_disabled",
                "no admin key is configured: set SURGE_ADMIN_KEY for the server, or list "
                "admin.keys (name + sha256) in the config",
                403,
            )
        presented = admin_key
        if presented is None and authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer":
                presented = token.strip()
        if not presented:
            raise SurgeError(
                "unauthorized",
                "the admin API needs a key: send 'Authorization: Bearer <key>' or 'X-Admin-Key'",
                401,
            )
        digest = hashlib.sha256(presented.encode("utf-8")).digest()
        for name, expected in self._keys:
            if hmac.compare_digest(digest, expected):
                return name
        raise SurgeError("unauthorized", "the admin key is not valid", 401)
