"""Names of the MLflow tags p2m writes (docs/TRACKING.md): one definition for writers and readers."""

from __future__ import annotations

KIND = "p2m.kind"  # "sweep" or "trial"
KIND_SWEEP = "sweep"
KIND_TRIAL = "trial"
KIND_TRAIN = "train"  # a training run started on its own (a sweep's training trial is a "trial")
SPEC = "p2m.spec"
PAPER_TABLE = "p2m.paper_table"
STAGE = "p2m.stage"
SWEEP_HASH = "p2m.sweep_hash"
CONFIG_HASH = "p2m.config_hash"
HASH_VERSION = "p2m.hash_version"
DATASET = "p2m.dataset"
SPLIT = "p2m.split"
SOURCE = "p2m.source"
GRID_KEYS = "p2m.grid_keys"
SEED_KEYS = "p2m.seed_keys"
SEED = "p2m.seed"
SETTING = "p2m.setting"
GIT_COMMIT = "p2m.git_commit"
ERROR = "p2m.error"
RESUMED = "p2m.resumed"  # how many times a launcher continued an unfinished training run
RESUMED_AT = "p2m.resumed_at"  # iterations of the checkpoints a training run's workers restarted from
RESUMED_FROM = "p2m.resumed_from"  # the checkpoint folder a training run's workers last restarted from
DAMAGED_CHECKPOINT = "p2m.damaged_checkpoint"  # damaged checkpoint files passed over on resume, one a line
WORKER_NODES = "p2m.worker_nodes"  # a training run's Ray node ids by rank, comma-separated (its latest worker group)
RAY_NODE = "p2m.ray_node"  # the Ray node id of the process that ran a trial
EXECUTOR = "p2m.executor"  # how a sweep ran its trials: ray (Ray Tune) or local (in the command's process)
CHECKPOINT_PREFIX = "p2m.checkpoint."  # p2m.checkpoint.ray, p2m.checkpoint.model: where they are
PARENT_RUN_ID = "mlflow.parentRunId"
SOURCE_NAME = "mlflow.source.name"  # MLflow's own: the UI's "Source" column (provenance.source_tags)
SOURCE_TYPE = "mlflow.source.type"
SOURCE_GIT_COMMIT = "mlflow.source.git.commit"
RUN_NAME = "mlflow.runName"
NOTE = "mlflow.note.content"  # a run's description (Markdown), shown on its page in the UI
DATASET_CONTEXT = "mlflow.data.context"  # a dataset input's tag: the split it was used as

# The experiment tag the MLflow UI reads for an experiment's kind: ours are model training, not
# GenAI (the 3.17 UI otherwise treats an experiment as a GenAI one). Set on every experiment p2m
# creates or reuses (p2m_core.tracking.store.ensure_experiment).
EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND_MODEL_DEVELOPMENT = "custom_model_development"

TRIALS_ARTIFACT = "trials.json"
TRIALS_FORMAT = "p2m-sweep-trials/1"
SPEC_ARTIFACT = "spec.yaml"
# The sweep's rendered table (python -m analysis.tables), attached to its run when it ends.
TABLE_MD_ARTIFACT = "table.md"
TABLE_CSV_ARTIFACT = "table.csv"

# Ending runs on purpose (docs/TRACKING.md, "Stopping a job" and "Claims").
END_REASON = "p2m.end_reason"  # why a run ended KILLED
REASON_STOPPED = "stopped"  # the prefix of END_REASON for a run whose launcher got a stop signal
REASON_STALE = "claim expired"  # ... for a RUNNING run whose owner stopped writing its heartbeat
OWNER = "p2m.owner"  # the launcher process (host:pid:start) that opened a run: who may end it on a signal
CLAIM = "p2m.claim"  # a trial's claim on its config hash: "choosing" or its bakery ticket (p2m_core.tracking.claims)
HEARTBEAT = "p2m.heartbeat"  # seconds since the epoch, rewritten while the run's owner is alive
CLAIMED_BY = "p2m.claimed_by"  # on a deleted trial run: the run that computed its config hash instead
