"""`python -m fastpath.kernels`: the kernel matrix, as `make kernels` runs it."""

from __future__ import annotations

import sys

from fastpath.kernels.cli import main

sys.exit(main())
