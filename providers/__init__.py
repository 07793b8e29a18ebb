"""Carrier and AI-provider protocols: sans-I/O codecs plus thin I/O sessions."""
