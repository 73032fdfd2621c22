"""Sweep results from MLflow as the paper's ablation tables and plots (reads docs/TRACKING.md's contract).

Modules:

- ``paper``: the paper's numbers (``paper_tables.yaml``) and which paper row a setting matches;
- ``runs``: MLflow -> pandas: the latest sweep of a spec, its ``trials.json``, its trials
  joined with their FINISHED runs by config hash (missing trials kept and marked);
- ``stats``: mean ± std over seeds, and the t interval of paired differences (one confidence level);
- ``tables``: one table per sweep of any spec (its declared columns and baseline), mean ± std over
  seeds, paired differences to the baseline with their 95 % interval, marked where it excludes 0;
- ``compare``: two sweeps of one spec, setting by setting, paired by seed (did a change move it?);
- ``trained``: what a training sweep's table adds (the network's columns, its own pseudo-mask PQ,
  and the pseudo-stage sweep's PQ of the same settings);
- ``plots``: PNG figures of the sweeps that exist (learning curves of the training sweeps too),
  logged back to their sweep runs; ``axis_plots``: every sweep's numeric grid axes;
  ``figures``: what the figure modules share;
- ``cli``: the store and output flags every command shares.

Commands::

    python -m analysis.tables --table NAME [--experiment NAME] [--tracking-uri URI] [--format md|latex|csv] [--out FILE]
    python -m analysis.compare --table NAME [--runs A B | --commits C D] [--tolerance T] [--fail-if-moved]
    python -m analysis.plots [--tracking-uri URI] [--experiment NAME] [--out DIR] [--no-log]
"""
