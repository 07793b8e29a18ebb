"""``python -m gateway.cli``: the ``voicegw`` command."""

import sys

from gateway.cli.main import main

sys.exit(main())
