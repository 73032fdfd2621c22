"""``python -m p2m_core.ablation``: one pseudo-stage setting in this process (:mod:`p2m_core.ablation.cli`)."""

import sys

from p2m_core.ablation.cli import main

sys.exit(main())
