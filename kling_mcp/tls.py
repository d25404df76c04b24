"""One TLS context for the whole process.

Building a context loads the system trust store, about 20 ms of blocking work; every HTTP client made its own, on
the event loop, while a client waited for its first answer. All of them share this one, built off the loop.
"""

from __future__ import annotations

import functools
import ssl

import httpx2


@functools.cache
def tls_context() -> ssl.SSLContext:
    return httpx2.create_ssl_context()
