"""MLflow tracking: the one place in p2m_core that imports MLflow (docs/TRACKING.md).

- :mod:`~p2m_core.tracking.uri`    which store a command uses (no MLflow import);
- :mod:`~p2m_core.tracking.tags`   the tag names, shared with ``analysis``;
- :mod:`~p2m_core.tracking.store`  reachability, experiments, sweep runs, what is finished;
- :mod:`~p2m_core.tracking.trial`  one trial's run: params, metrics, artifacts, status;
- :mod:`~p2m_core.tracking.datasets`  the splits a run reads, as MLflow dataset inputs;
- :mod:`~p2m_core.tracking.ui`     links into the MLflow UI (no MLflow import).

Submodules are imported on use, so that importing :mod:`p2m_core` never loads MLflow.
"""
