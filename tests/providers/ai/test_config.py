"""AgentConfig.for_provider and the layering of AgentOptions (deployment, then agent)."""

from __future__ import annotations

from providers.ai.config import (
    DEFAULT_INSTRUCTIONS,
    DEFAULTS,
    AgentConfig,
    AgentOptions,
    Provider,
    ProviderOptions,
)

DEPLOYMENT = AgentOptions(
    instructions="Be brief.",
    greeting="Hello.",
    providers={
        Provider.OPENAI: ProviderOptions("gpt-realtime-2", "cedar"),
        Provider.GEMINI: ProviderOptions(voice="Kore"),
    },
)


def test_options_fill_in_what_for_provider_leaves_to_defaults() -> None:
    config = AgentConfig.for_provider("openai", options=DEPLOYMENT)
    assert (config.model, config.voice) == ("gpt-realtime-2", "cedar")
    assert (config.instructions, config.greeting) == ("Be brief.", "Hello.")
    gemini = AgentConfig.for_provider("gemini", options=DEPLOYMENT)
    assert (gemini.model, gemini.voice) == (DEFAULTS[Provider.GEMINI].model, "Kore")
    bare = AgentConfig.for_provider("deepgram")
    assert (bare.model, bare.voice) == (DEFAULTS[Provider.DEEPGRAM].model, "aura-2-thalia-en")
    assert (bare.instructions, bare.greeting) == (DEFAULT_INSTRUCTIONS, None)


def test_explicit_values_win_over_options() -> None:
    config = AgentConfig.for_provider(
        "openai", options=DEPLOYMENT, model="m", instructions="Other.", greeting=None
    )
    assert (config.model, config.voice) == ("m", "cedar")
    assert (config.instructions, config.greeting) == ("Other.", None)


def test_an_agent_overrides_the_deployment_field_by_field() -> None:
    agent = AgentOptions(
        greeting="Acme support.", providers={Provider.OPENAI: ProviderOptions(voice="marin")}
    )
    merged = agent.over(DEPLOYMENT)
    assert (merged.instructions, merged.greeting) == ("Be brief.", "Acme support.")
    assert merged.provider(Provider.OPENAI) == ProviderOptions("gpt-realtime-2", "marin")
    assert merged.provider(Provider.GEMINI) == ProviderOptions(voice="Kore")
    assert merged.provider(Provider.DEEPGRAM) == ProviderOptions()


def test_transcripts_layer_like_the_other_options() -> None:
    assert AgentConfig.for_provider("openai", api_key="k").transcripts is False
    assert AgentOptions(transcripts=True).over(DEPLOYMENT).transcripts is True
    assert AgentOptions().over(AgentOptions(transcripts=True)).transcripts is True
    assert AgentOptions(transcripts=False).over(AgentOptions(transcripts=True)).transcripts is False
    config = AgentConfig.for_provider(
        "gemini", api_key="k", options=AgentOptions(transcripts=True).over(DEPLOYMENT)
    )
    assert config.transcripts is True
