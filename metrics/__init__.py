"""voicegw metrics package."""
