"""Spend confirmation: ask the user before a large paid request, where the client can ask.

A ``Resolve`` dependency, so it works in both protocol eras (a live elicitation on handshake sessions, an
input-required round trip on 2026 ones) and never appears in a tool's input schema. The spend guards apply
whether or not anyone is asked.
"""

from mcp.server.mcpserver import AcceptedElicitation, Context, Elicit, ElicitationResult
from pydantic import BaseModel, Field

from kling_mcp import limits
from kling_mcp.server.state import AppState


class ConfirmSpend(BaseModel):
    confirm: bool = Field(description="Submit this paid generation?")


Confirmed = ElicitationResult[ConfirmSpend]


def confirm_seconds(ctx: Context[AppState], seconds: int) -> ConfirmSpend | Elicit[ConfirmSpend]:
    settings = ctx.request_context.lifespan_context.settings
    threshold = settings.confirm_above_seconds
    caps = ctx.client_capabilities
    if not settings.live or threshold is None or seconds <= threshold or caps is None or caps.elicitation is None:
        return ConfirmSpend(confirm=True)
    return Elicit(
        f"This Kling generation bills {seconds} s of video (about ${seconds * limits.PRICE_PER_SECOND_USD:.2f} at "
        f"the upstream list price), above the {threshold} s you asked to confirm. Submit it?",
        ConfirmSpend,
    )


async def confirm_duration(duration: int, ctx: Context[AppState]) -> ConfirmSpend | Elicit[ConfirmSpend]:
    return confirm_seconds(ctx, duration)


async def confirm_shots(shots: list[limits.Shot], ctx: Context[AppState]) -> ConfirmSpend | Elicit[ConfirmSpend]:
    return confirm_seconds(ctx, sum(s.duration for s in shots))


def declined(confirmed: Confirmed) -> bool:
    return not (isinstance(confirmed, AcceptedElicitation) and confirmed.data.confirm)
