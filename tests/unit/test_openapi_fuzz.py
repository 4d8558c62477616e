"""Property-based fuzzing of the served OpenAPI spec (schemathesis), on the scripted engine.

CI-sized: a bounded number of cases per operation, every check schemathesis has except
"schema-valid request accepted" (context-length and deadline refusals can't be written in JSON
Schema). The full run against the real model is in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings

from service.app import create_app
from service.settings import Settings
from tests.unit.fake_engine import FakeEngine

KEY = "fuzz-key"


def _app():
    engine = FakeEngine(max_model_len=512)

    async def load() -> FakeEngine:
        return engine

    app = create_app(Settings(api_keys=(KEY,), max_tokens_limit=8), "fake", load)
    app.state.server.attach(engine)  # ready before schemathesis' client runs the lifespan
    return app


schema = schemathesis.openapi.from_asgi("/openapi.json", _app(), headers={"Authorization": f"Bearer {KEY}"})


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_spec(case):
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"},
                           excluded_checks=[schemathesis.checks.positive_data_acceptance])
