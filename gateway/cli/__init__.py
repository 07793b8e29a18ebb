"""The ``voicegw`` command line: ``main`` (the parser, serve, demo, simulate), ``admin`` (users,
API keys, signing keys, audit), ``simulate`` (a carrier for tests and the demo) over ``base``.
Imports every room of the gateway; nothing in the gateway imports it but its commands.
"""
