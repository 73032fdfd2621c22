"""Sweep results from MLflow as the paper's ablation tables and plots (reads docs/TRACKING.md's contract).

Modules:

- ``paper``: the paper's numbers (``paper_tables.yaml``) and which paper row a setting matches;
- ``runs``: MLflow -> pandas: the latest sweep of a spec, its ``trials.json``, its trials
  joined with their FINISHED runs by config hash (missing trials kept and marked);
- ``stats``: mean ± std over seeds, and the t interval of paired differences (one confidence level);
- ``tables``: one table per sweep, mean ± std over seeds, paired differences to the baseline with
  their 95 % interval, marked where it excludes 0;
- ``trained``: what a training sweep's table adds (the network's columns, its own pseudo-mask PQ,
  and the pseudo-stage sweep's PQ of the same settings);
- ``plots``: PNG figures of the sweeps that exist (learning curves of the training sweeps too),
  logged back to their sweep runs.

Commands::

    python -m analysis.tables --table table7|table7_train|table4|... [--experiment NAME] [--tracking-uri URI] [--format md|latex|csv] [--out FILE]
    python -m analysis.plots [--tracking-uri URI] [--experiment NAME] [--out DIR] [--no-log]
"""
