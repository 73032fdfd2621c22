"""The sweep's table, attached to its MLflow run when the sweep ends.

So the table of a sweep is one click away in the UI (the sweep run's artifacts ``table.md`` and
``table.csv``), rendered by :mod:`analysis.tables` exactly as ``python -m analysis.tables``
prints it. Rendering is a convenience: any error in it is logged and never fails the sweep,
whose trials are recorded either way (the command in the run's description renders it later).
"""

from __future__ import annotations

import logging

from p2m_core.tracking import store
from p2m_core.tracking import tags as T
from ray_jobs.plan import SweepPlan

log = logging.getLogger(__name__)


def attach_table(plan: SweepPlan) -> bool:
    """Render the plan's table (Markdown and CSV) and log both to its sweep run.

    The table of a spec is that of its latest sweep in the experiment; when that is another
    sweep run (a sweep of the same spec with other seeds or ``--set`` started later), nothing is
    attached: this run's table would show the other's numbers. Returns whether it was attached."""
    from analysis import tables  # pandas and MLflow (a second) only when a sweep ends, not at its start

    name, experiment = plan.spec.name, plan.spec.mlflow_experiment
    try:
        client = store.client(plan.tracking_uri)
        df, meta = tables.build_table(client, name, experiment)
        found = meta.get("sweep_run_id", plan.parent_run_id)
        if found != plan.parent_run_id:
            log.warning("[%s] no table attached to sweep run %s: the latest sweep of %r in %r is run %s",
                        name, plan.parent_run_id, name, experiment, found)  # fmt: skip
            return False
        files = {T.TABLE_MD_ARTIFACT: tables.render(df, meta, "md"), T.TABLE_CSV_ARTIFACT: tables.render(df, meta, "csv")}
        store.log_files(plan.tracking_uri, plan.parent_run_id, files)
    except Exception as exc:  # a table problem never fails the sweep
        log.warning("[%s] could not render the table of sweep run %s: %s: %s", name, plan.parent_run_id,
                    type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))  # fmt: skip
        return False
    return True
