"""REST: Subscription, the 2 endpoints of API.md section 7."""

from __future__ import annotations

from starlette.responses import Response

from app.models import SubscriptionPublic, UsagePublic
from app.rest.operations import Call, Operation, json_response
from app.services import subscription


async def get_subscription(call: Call) -> Response:
    return json_response(
        await subscription.get_subscription(runtime=call.runtime, principal=call.principal)
    )


async def get_usage(call: Call) -> Response:
    return json_response(
        await subscription.get_usage(runtime=call.runtime, principal=call.principal)
    )


OPERATIONS = [
    Operation(
        method="GET",
        path="/api/subscription",
        operation_id="getSubscription",
        summary="The plan, its limits and the current period",
        description=(
            "The user's plan and its limits. The period is the calendar month in UTC; "
            "`current_period_end` is exclusive (the next period's start)."
        ),
        handler=get_subscription,
        tag="Subscription",
        policy="reads",
        scope="usage:read",
        idempotent=True,
        responses={200: (SubscriptionPublic, "The subscription.")},
    ),
    Operation(
        method="GET",
        path="/api/subscription/usage",
        operation_id="getSubscriptionUsage",
        summary="Usage in the current period",
        description=(
            "Documents, characters and personas as they are now (equal to the list totals), "
            "with the plan's limits; chunks embedded and authenticated API requests in this "
            "period (this request included). Requests made through other server processes "
            "show up within a few seconds."
        ),
        handler=get_usage,
        tag="Subscription",
        policy="reads",
        scope="usage:read",
        idempotent=True,
        responses={200: (UsagePublic, "Usage so far this period.")},
    ),
]
