"""Deployment between hospitals: provisioning kits and their checks (docs/architecture.md, "Layers of the package").

:mod:`.provision` reads a ``FEDERATION.toml`` and writes one kit per party; :mod:`.kit` loads a
kit and refuses one that is altered, misplaced, for another role or for another federation;
:mod:`.pki` makes the TLS and authentication keys with ``cryptography``.
"""
