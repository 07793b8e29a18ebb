"""voicegw gateway package."""
