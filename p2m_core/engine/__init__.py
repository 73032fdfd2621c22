"""Training machinery that runs without Ray.

- :mod:`~p2m_core.engine.step`       one optimisation step (``train_step``) and the module DDP
  wraps (``NetworkWithCriterion``);
- :mod:`~p2m_core.engine.step_metrics` what a step logs, read back to the host once per logged
  window;
- :mod:`~p2m_core.engine.loop`       the loop around it (``OptimisationLoop``): data shard,
  schedule, exact resume state;
- :mod:`~p2m_core.engine.run`        one worker's share of a run from a config (``WorkerRun``):
  evaluation schedule, overlays, resume files, the final model and predictions;
- :mod:`~p2m_core.engine.data_check` the data checks a launcher runs before any worker starts;
- :mod:`~p2m_core.engine.evaluate`   PQ of predictions and of pseudo masks, mIoU;
- :mod:`~p2m_core.engine.predictions` a checkpoint's panoptic predictions on image files (PNG +
  JSON, overlays): what ``python -m p2m_core.predict`` and a finished run write;
- :mod:`~p2m_core.engine.device`     the ``auto | cpu | cuda`` device settings;
- :mod:`~p2m_core.engine.checkpoint` the model file (``p2m-checkpoint/1``);
- :mod:`~p2m_core.engine.checkpoint_check` resume checkpoints' manifests: a damaged one found and
  passed over for the previous good one.

The distributed wrapper (Ray Train) is :mod:`ray_jobs.train`.
"""
