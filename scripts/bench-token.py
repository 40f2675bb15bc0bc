#!/usr/bin/env python3
"""Print an RS256 token for benches/peer-bench-jwt.yaml: signed with the test fixture key
key-1 (nexus-middleware/tests/fixtures/jwt/rsa1.pem), valid for a day. Needs PyJWT and
cryptography (`pip install pyjwt cryptography`)."""
import pathlib
import sys
import time

import jwt

root = pathlib.Path(__file__).resolve().parent.parent
key = (root / "nexus-middleware/tests/fixtures/jwt/rsa1.pem").read_bytes()
sub = sys.argv[1] if len(sys.argv) > 1 else "bench-user"
claims = {"sub": sub, "exp": int(time.time()) + 86400}
print(jwt.encode(claims, key, algorithm="RS256", headers={"kid": "key-1"}))
