"""`python -m fastpath.doctor`: the doctor on its own, as `fastpath doctor` runs it."""

from __future__ import annotations

import sys

from fastpath.doctor.cli import main

sys.exit(main())
