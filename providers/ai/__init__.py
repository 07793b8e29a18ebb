"""AI voice provider codecs and sessions (OpenAI Realtime, Gemini Live, Deepgram Agent, echo)."""
