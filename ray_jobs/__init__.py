"""Entry points that run p2m on Ray: thin command lines that build Config objects and call the core.

- ``python -m ray_jobs.train CONFIG ...`` one training run on Ray Train, logged to MLflow;
- :mod:`ray_jobs.training`                a training run from its checked plan to its ended MLflow run;
- :mod:`ray_jobs.train_worker`            what each Ray Train worker executes;
- ``python -m ray_jobs.sweep SPEC ...``   a Ray Tune grid over a sweep spec, logged to MLflow
                                          (or ``--base CONFIG --grid KEY=V1,V2 --name NAME``);
- :mod:`ray_jobs.spec`                    sweep specs and their validation;
- :mod:`ray_jobs.grid_flags`              a spec from those flags (``--save-spec`` writes it);
- :mod:`ray_jobs.plan`                    a sweep's trials and its place in MLflow (resume);
- :mod:`ray_jobs.tuning`                  a plan's missing trials on Ray Tune;
- :mod:`ray_jobs.trial`                   the Tune trials (pseudo stage; training: launches a TorchTrainer);
- :mod:`ray_jobs.pseudo_trial`            one pseudo-stage trial, with no Ray in it (both executors run it);
- :mod:`ray_jobs.local_sweep`             ``--executor local``: a pseudo sweep's trials in the command's process;
- :mod:`ray_jobs.executors`               the executors and which sweeps each can run;
- :mod:`ray_jobs.trial_lines`             one console line per finished trial, and the counts;
- :mod:`ray_jobs.tune_progress`           Tune's trial events as those lines;
- :mod:`ray_jobs.train_progress`          progress lines of training runs, read from MLflow;
- :mod:`ray_jobs.sweep_table`             the table attached to a sweep run when it ends;
- :mod:`ray_jobs.worker_setup`            what every Ray worker does first (logging, threads, MLflow retries);
- :mod:`ray_jobs.job_paths`               where files and stores live once work leaves this process;
- :mod:`ray_jobs.cluster`                 starting or attaching to Ray;
- :mod:`ray_jobs.stop`                    ``ray job stop`` and Ctrl-C end the open runs KILLED; how a command exits;
- ``python -m ray_jobs.cluster_auth ...`` the AWS cluster's Ray token and MLflow login (cluster.yaml);
- ``runtime_env.yaml``                    for ``ray job submit``.

One pseudo-stage setting without Ray is ``python -m p2m_core.ablation``. Only this package
imports Ray.
"""
