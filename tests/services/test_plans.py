"""Plans come from the database's `plans` table, the one truth for every server: seeded from
the configuration when empty, changed by `personaizer plans ...`, re-read within
`plans_refresh_s` by every process, and a user's plan that is missing is refused, not guessed."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from sqlalchemy import text
from starlette.applications import Starlette

from app.errors import UnknownPlan, ValidationFailed
from app.services import accounts, plans
from app.services.runtime import Runtime
from tests.conftest import AppFactory, assert_problem, client_for, new_key, plan_config
from tests.support.live import personaizer

pytestmark = pytest.mark.anyio

SUBSCRIPTION = "/api/subscription"


def _runtime(app: Starlette) -> Runtime:
    runtime: Runtime = app.state.runtime
    return runtime


async def test_the_table_is_seeded_once_then_is_the_truth(make_app: AppFactory) -> None:
    app = await make_app(plans={"team": plan_config("team", personas=1)})
    runtime = _runtime(app)
    assert set(await runtime.plans()) == {"free", "pro", "unlimited", "team"}
    await plans.set_plan(runtime=runtime, plan_id="team", limits={"personas": 7})
    # A restart with other configured plans keeps the table as it is (it is not empty).
    again = await make_app(plans={"team": plan_config("team", personas=2)})
    assert (await _runtime(again).plan("team")).limits.personas == 7
    # Until the operator imports the configuration on purpose.
    await plans.import_plans(runtime=_runtime(again))
    assert (await _runtime(again).plan("team")).limits.personas == 2


async def test_a_user_is_put_only_on_a_plan_that_exists(make_app: AppFactory) -> None:
    runtime = _runtime(await make_app())
    with pytest.raises(UnknownPlan, match=r"No plan 'gold'; the plans are: free, pro, unlimited"):
        await accounts.create_user(runtime=runtime, email="a@example.com", plan_id="gold")
    await accounts.create_user(runtime=runtime, email="a@example.com")
    with pytest.raises(UnknownPlan, match="the plans are: free, pro, unlimited"):
        await accounts.set_plan(runtime=runtime, email="a@example.com", plan_id="gold")
    # A new plan needs every limit; then users may be put on it, and it may not be deleted.
    with pytest.raises(ValidationFailed, match="Field required"):
        await plans.set_plan(runtime=runtime, plan_id="gold", limits={"personas": 5})
    limits = plan_config("gold")["limits"]
    await plans.set_plan(runtime=runtime, plan_id="gold", name="Gold", limits=limits)
    await accounts.set_plan(runtime=runtime, email="a@example.com", plan_id="gold")
    with pytest.raises(ValidationFailed, match="1 users are on plan 'gold'"):
        await plans.delete_plan(runtime=runtime, plan_id="gold")
    with pytest.raises(ValidationFailed, match="the default plan"):
        await plans.delete_plan(runtime=runtime, plan_id="free")
    await accounts.set_plan(runtime=runtime, email="a@example.com", plan_id="pro")
    await plans.delete_plan(runtime=runtime, plan_id="gold")
    assert "gold" not in await runtime.plans()


async def test_a_user_on_a_missing_plan_is_refused_and_logged_once(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    app = await make_app(plans_refresh_s=0)
    key = await new_key(app, plan="pro")
    async with _runtime(app).db.write() as session:  # "deleted by hand"
        await session.execute(text("DELETE FROM plans WHERE id = 'pro'"))
    with caplog.at_level(logging.ERROR, logger="app.services.runtime"):
        async with client_for(app, **{"X-Api-Key": key}) as api:
            for _ in range(3):
                body = assert_problem(await api.get(SUBSCRIPTION), 403, "account.plan_missing")
                assert "'pro' does not exist" in body["detail"]
    logged = [r for r in caplog.records if "plans table has no such plan" in r.getMessage()]
    assert len(logged) == 1
    # Restoring the plan serves the account again, without a restart.
    await plans.import_plans(runtime=_runtime(app))
    async with client_for(app, **{"X-Api-Key": key}) as api:
        assert (await api.get(SUBSCRIPTION)).json()["plan"]["id"] == "pro"


@pytest.mark.engines("postgresql")
async def test_a_change_reaches_another_server_without_a_restart(make_app: AppFactory) -> None:
    one = await make_app(plans_refresh_s=0.2)
    two = await make_app(
        data_dir=one.state.runtime.settings.data_dir.parent / "two", plans_refresh_s=0.2
    )
    key = await new_key(one, plan="free")
    async with client_for(two, **{"X-Api-Key": key}) as api:
        assert (await api.get(SUBSCRIPTION)).json()["limits"]["personas"] == 3
        await plans.set_plan(runtime=_runtime(one), plan_id="free", limits={"personas": 9})
        await asyncio.sleep(0.3)  # past `two`'s plans_refresh_s
        assert (await api.get(SUBSCRIPTION)).json()["limits"]["personas"] == 9


def test_plans_commands(tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    assert personaizer("init", *data).returncode == 0
    r = personaizer("plans", "list", "--json", *data)
    assert r.returncode == 0, r.stderr
    assert "unlimited" in r.stdout
    r = personaizer("plans", "set", "team", "--limits", '{"personas": 2}', *data)
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    limits = plan_config("team")["limits"]
    r = personaizer(
        "plans",
        "set",
        "team",
        "--name",
        "Team",
        "--limits",
        json.dumps(limits),
        *data,
    )
    assert r.returncode == 0 and "created plan team" in r.stdout, r.stderr
    r = personaizer("plans", "set", "team", "--personas", "4", *data)
    assert r.returncode == 0 and "changed plan team" in r.stdout, r.stderr
    assert '"personas": 4' in personaizer("plans", "show", "team", *data).stdout
    r = personaizer("users", "create", "a@example.com", "--plan", "gold", *data)
    assert r.returncode == 1
    assert r.stderr == ("error: No plan 'gold'; the plans are: free, pro, team, unlimited.\n"), (
        r.stderr
    )
    assert personaizer("users", "create", "a@example.com", "--plan", "team", *data).returncode == 0
    r = personaizer("users", "set-plan", "a@example.com", "gold", *data)
    assert r.returncode == 1 and "the plans are: free, pro, team, unlimited" in r.stderr
    r = personaizer("plans", "delete", "team", *data)
    assert r.returncode == 1 and "1 users are on plan 'team'" in r.stderr
    assert personaizer("users", "set-plan", "a@example.com", "pro", *data).returncode == 0
    assert personaizer("plans", "delete", "team", *data).returncode == 0
    assert "team" not in personaizer("plans", "list", "--json", *data).stdout
