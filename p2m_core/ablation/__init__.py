"""The pseudo-label stage: pseudo masks from ground-truth or network maps, scored without training.

- :mod:`~p2m_core.ablation.sources`  map sources (``oracle``, ``oracle_corrupt``, ``image``, ``checkpoint``);
- :mod:`~p2m_core.ablation.network`  the ``checkpoint`` source's frozen network, batch by batch;
- :mod:`~p2m_core.ablation.prepare`  images, points and maps of a split, in batches;
- :mod:`~p2m_core.ablation.scoring`  PQ / mIoU of pseudo masks and solver diagnostics;
- :mod:`~p2m_core.ablation.stage`    :func:`run_pseudo_stage`: one setting over one split;
- :mod:`~p2m_core.ablation.cli`      ``python -m p2m_core.ablation``: that, from the command line, without Ray.

It takes :class:`~p2m_core.config.Config` objects only; sweeps over settings live in
``ray_jobs`` (docs/METHOD.md, "The pseudo-label ablation stage").
"""

from p2m_core.ablation.stage import METRICS_FORMAT, STAGE, check_pseudo_config, run_pseudo_stage

__all__ = ["METRICS_FORMAT", "STAGE", "check_pseudo_config", "run_pseudo_stage"]
