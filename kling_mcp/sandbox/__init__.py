"""The sandbox gateway: Pixazo's HTTP contract implemented locally, rendering real placeholder MP4s.

It is kling-mcp's offline mode and what every test runs against. ``docs/pixazo-contract.md §11`` says what it
must do. Importing this package does not load PyAV or Pillow; renders import them when they run.
"""

from kling_mcp.sandbox.app import create_app
from kling_mcp.sandbox.gateway import Job, SandboxGateway, WebhookDelivery
from kling_mcp.sandbox.render import render_placeholder
from kling_mcp.sandbox.server import RunningSandbox, serve_sandbox
from kling_mcp.sandbox.settings import Faults, SandboxConfig

__all__ = [
    "Faults",
    "Job",
    "RunningSandbox",
    "SandboxConfig",
    "SandboxGateway",
    "WebhookDelivery",
    "create_app",
    "render_placeholder",
    "serve_sandbox",
]
