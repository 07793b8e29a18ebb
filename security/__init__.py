"""voicegw security package."""
