"""The end-to-end fixtures (a served gateway, provider fakes, the carrier REST fake) for the
metrics check, which places a real call."""

from tests.e2e.conftest import (  # noqa: F401 - fixtures, used by name
    deepgram_fake,
    gemini_fake,
    make_gateway,
    openai_fake,
    provider_env,
    rest,
)
