"""Run sweep specs as Ray Tune grids, one MLflow child run per trial.

    python -m ray_jobs.sweep SPEC [SPEC ...] [--set KEY=VALUE ...] [--seeds S,S] [--resume]
                             [--max-concurrent N] [--storage-path DIR] [--executor ray|local]
                             [--dry-run] [--quiet]
    python -m ray_jobs.sweep --base CONFIG --grid KEY=V1,V2 [--grid ...] --name NAME
                             [--stage pseudo|train] [--seeds S,S] [--save-spec FILE] [...]

The second form describes one sweep with flags instead of a file (:mod:`ray_jobs.grid_flags`):
the same trials, hashes and table as the file ``--save-spec`` writes.

For each spec (:mod:`ray_jobs.spec`) the driver, before Ray starts: builds and checks every
trial's config; chooses the tracking store (docs/TRACKING.md) and fails if it does not answer;
creates the experiment; opens the sweep's parent run (the same one when this sweep ran before);
marks that run's orphaned RUNNING children KILLED; and skips every trial whose config hash
already has a FINISHED run in the experiment. Only the remaining trials go to Ray Tune
(``ray.init`` in-process, or the cluster named by ``RAY_ADDRESS``), with ``reuse_actors`` on:
a fresh actor per short trial would triple its cost.

``--executor local`` runs a pseudo sweep's trials one after another in this process instead,
without Ray (:mod:`ray_jobs.local_sweep`): the same runs in the same store, for short sweeps
on one machine, where starting Ray costs as much as the trials.

So an interrupted sweep is completed by running the same command again (``--resume`` says so
explicitly), and a finished one runs nothing. Exit status: 0 when every trial finished, 1 when
some failed (each is a FAILED child run carrying its error; the others still finish), 2 for bad
input (nothing started).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence

from p2m_core.config import SPLITS, STAGES, add_config_arguments
from p2m_core.errors import P2MInputError
from p2m_core.tracking import store
from p2m_core.tracking import tags as T
from p2m_core.tracking.ui import LOCAL_UI, experiment_url, ui_command
from ray_jobs import stop
from ray_jobs.stop import exit_process
from ray_jobs.cluster import connect, shutdown
from ray_jobs.executors import EXECUTORS, LOCAL, check_executor
from ray_jobs.stage_process import StageProcess
from ray_jobs.grid_flags import save_spec, spec_from_flags, spec_mapping
from ray_jobs.plan import SweepPlan, is_new_store, open_in_mlflow, plan_sweep
from ray_jobs.sweep_table import attach_table


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def parse_seeds(text: str) -> tuple[int, ...]:
    """``--seeds 0,1,2`` -> (0, 1, 2): distinct non-negative integers."""
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise P2MInputError(f"--seeds {text!r}: expected comma-separated integers, e.g. --seeds 0,1,2") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise P2MInputError(f"--seeds {text!r}: expected distinct non-negative integers")
    return seeds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ray_jobs.sweep",
        description="Run sweep specs (experiments/sweeps/*.yaml) as Ray Tune grids logged to MLflow.",
    )
    parser.add_argument("specs", nargs="*", metavar="SPEC", help="sweep spec YAML file(s); or describe one sweep with --grid")
    add_config_arguments(parser)
    flags = parser.add_argument_group("a sweep from flags (instead of SPEC files; ray_jobs/grid_flags.py)")
    flags.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a grid axis (repeatable): the product of all axes runs")
    flags.add_argument("--base", default=None, metavar="CONFIG", help="the base config of every trial (with --grid)")
    flags.add_argument("--name", default="", help="the sweep's name: analysis.tables --table NAME renders it")
    flags.add_argument("--stage", default=None, choices=STAGES, help="pseudo (the label stage, default) or train (a network per trial)")
    flags.add_argument("--split", default=None, choices=SPLITS, help="the split the table reports (default val)")
    flags.add_argument("--description", default="", help="what the sweep asks, shown in MLflow")
    flags.add_argument("--metrics", default="", metavar="M,M", help="the table's columns (default: the stage's)")
    flags.add_argument("--baseline", action="append", default=[], metavar="KEY=VALUE", help="the grid point differences are taken against (default: the first)")
    parser.add_argument("--experiment", default="", help="MLflow experiment, replacing the spec's (default p2m-<stage>); "
                        "e.g. a second copy of a sweep after a code change, for analysis.compare")
    flags.add_argument("--save-spec", default=None, metavar="FILE", help="also write the flags' spec to FILE (a spec file that runs the same sweep)")
    parser.add_argument("--seeds", default=None, metavar="S,S,...", help="replace the specs' seeds, e.g. --seeds 0 for a quick look")
    parser.add_argument("--resume", action="store_true", help="complete an interrupted sweep (re-running does the same: finished trials are never re-run)")
    parser.add_argument("--max-concurrent", type=int, default=None, metavar="N", help="at most N trials at once (default: as many as the resources allow)")
    parser.add_argument("--storage-path", default=None, help="Ray Tune's own results folder (default ~/ray_results; shared storage on multi-node clusters)")
    parser.add_argument("--executor", default="ray", choices=EXECUTORS,
                        help="ray: trials as Ray Tune trials (default); local: a pseudo sweep's trials one after another "
                        "in this process, without Ray (short sweeps on one machine; ray_jobs/local_sweep.py)")
    parser.add_argument("--dry-run", action="store_true", help="check the specs and show what would run, without starting Ray")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Tune's rich console output reprints a status table and banners; TrialProgress prints one
    # line per trial instead, which the legacy reporter at verbose=0 leaves alone.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # MLflow is the record; Tune's own CSV/JSON/TensorBoard loggers would only duplicate it (and
    # TensorBoard's import pulls torch into the driver: ~2 s).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # SIGINT ends the sweep like SIGTERM (ray_jobs/stop.py), not through Tune's own handler, which
    # saves Tune's state (MLflow is the record) and leaves the runs RUNNING.
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    args = build_parser().parse_args(argv)
    if args.config is not None:
        print("error: --config does not apply to sweeps (each spec names its base config)", file=sys.stderr)
        return 2
    quiet = args.quiet
    try:
        if args.max_concurrent is not None and args.max_concurrent < 1:
            raise P2MInputError(f"--max-concurrent must be >= 1, got {args.max_concurrent}")
        seeds = parse_seeds(args.seeds) if args.seeds is not None else None
        if args.grid:
            plans = [plan_sweep(_flag_spec(args, seeds), ())]
        elif args.specs:
            plans = [plan_sweep(path, args.overrides, seeds, args.experiment) for path in args.specs]
        else:
            raise P2MInputError("nothing to run: give sweep spec files, or --base CONFIG --grid KEY=V1,V2 ... --name NAME")
        for plan in plans:
            check_executor(plan, args.executor)
        for uri in dict.fromkeys(p.tracking_uri for p in plans):
            store.check_reachable(uri)
    except P2MInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Nothing can be finished in a store that does not exist yet: then Ray is needed for sure
    # and starts while MLflow sets up (each takes seconds). Otherwise MLflow goes first, so a
    # finished sweep never starts Ray.
    # Run locally (no Ray), MLflow goes first too, and the child process that computes the trials
    # imports torch on the other core meanwhile (a thread would not help: the GIL;
    # docs/BENCHMARKS.md).
    overlap = args.executor != LOCAL and not args.dry_run and all(is_new_store(p.tracking_uri) for p in plans)
    stages = StageProcess()
    if args.executor == LOCAL and not args.dry_run:
        stages.start()
    ray_started: tuple[float, bool] | None = None
    try:
        if overlap:
            with ThreadPoolExecutor(max_workers=1) as pool:
                pending = pool.submit(prepare_tracking, plans, quiet, args.resume)
                ray_started = connect()
                importlib.import_module("ray.tune")  # 0.6 s of imports run_plan needs, while MLflow sets up
                pending.result()
        else:
            prepare_tracking(plans, quiet, args.resume)
    except P2MInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if ray_started is not None:
            shutdown()
        stages.kill()
        return 2
    if args.dry_run:
        for plan in plans:
            for t in plan.todo:
                print(f"{plan.spec.name}\t{t.config_hash}\t{t.run_name}")
        return 0
    try:
        return _run(plans, args, quiet, ray_started, stages)
    finally:
        stages.kill()


def _flag_spec(args: argparse.Namespace, seeds: tuple[int, ...] | None):
    """The spec the ``--grid`` flags describe (checked like a file; saved when asked)."""
    if args.specs:
        raise P2MInputError(f"give either spec files ({' '.join(args.specs)}) or --grid flags, not both")
    if not args.base:
        raise P2MInputError("--grid needs --base CONFIG: the config every trial starts from")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    raw = spec_mapping(args.base, args.grid, args.name, stage=args.stage, split=args.split, seeds=seeds,
                       overrides=args.overrides, description=args.description, metrics=metrics,
                       baseline=args.baseline, experiment=args.experiment)
    spec = spec_from_flags(raw)
    if args.save_spec:
        say(f"wrote {save_spec(raw, args.save_spec)}", args.quiet)
    return spec


def prepare_tracking(plans: list[SweepPlan], quiet: bool, resume: bool = False) -> None:
    """Open every plan in MLflow and say what will run."""
    for plan in plans:
        open_in_mlflow(plan)
        stop.open_runs.add(plan.tracking_uri, plan.parent_run_id, plan.experiment_id)
        if resume and not plan.reused_parent:
            say(f"[{plan.spec.name}] --resume: no earlier run of this sweep in {plan.tracking_uri}; starting it", quiet)
        say(
            f"[{plan.spec.name}] {len(plan.trials)} trials ({len(plan.spec.settings())} settings x "
            f"{len(plan.spec.seeds)} seeds): {len(plan.done)} already finished, {len(plan.todo)} to run"
            + (f"; {plan.killed} interrupted runs marked KILLED" if plan.killed else "")
            + f"; MLflow {plan.tracking_uri}, experiment {plan.spec.mlflow_experiment!r}",
            quiet,
        )


def say_ui_command(plans: list[SweepPlan], quiet: bool) -> None:
    """How to open the links printed per sweep: the command that serves each local store's UI."""
    for uri in dict.fromkeys(plan.tracking_uri for plan in plans):
        command = ui_command(uri)
        if command:
            say(f"(to serve these links at {LOCAL_UI}: {command})", quiet)


def _run(
    plans: list[SweepPlan], args: argparse.Namespace, quiet: bool, ray_started: tuple[float, bool] | None, stages: StageProcess
) -> int:
    totals = {"finished": 0, "failed": 0}
    errors: list[str] = []
    attached = bool(ray_started and ray_started[1])
    started = ray_started is not None
    if started:
        say(f"Ray {'attached' if attached else 'started in-process'} in {ray_started[0]:.1f} s", quiet)
    try:
        for plan in plans:
            finished = failed = 0
            if plan.todo and args.executor == LOCAL:
                from ray_jobs.local_sweep import run_plan_locally

                finished, failed, lines = run_plan_locally(plan, quiet, stages)
                errors.extend(f"[{plan.spec.name}] {line}" for line in lines)
            elif plan.todo:
                if not started:
                    seconds, attached = connect()
                    started = True
                    say(f"Ray {'attached' if attached else 'started in-process'} in {seconds:.1f} s", quiet)
                # Ray Tune's imports (a second) only once trials are to run: not for a dry run,
                # bad input or a finished sweep
                from ray_jobs.tuning import run_plan

                try:
                    finished, failed, lines = run_plan(plan, args.max_concurrent, args.storage_path, attached, quiet)
                except P2MInputError as exc:
                    print(f"error: {exc}", file=sys.stderr)
                    store.close_sweep_run(plan.tracking_uri, plan.parent_run_id, {"trials_total": len(plan.trials)}, failed=True)
                    stop.open_runs.discard(plan.parent_run_id)
                    return 2
                errors.extend(f"[{plan.spec.name}] {line}" for line in lines)
            counts = {
                "trials_total": len(plan.trials), "trials_skipped": len(plan.done),
                "trials_finished": finished, "trials_failed": failed,
            }
            missing = len(plan.todo) - finished - failed
            store.close_sweep_run(plan.tracking_uri, plan.parent_run_id, counts, failed=bool(failed or missing))
            stop.open_runs.discard(plan.parent_run_id)
            tabled = attach_table(plan)
            totals["finished"] += finished
            totals["failed"] += failed + missing
            say(
                f"[{plan.spec.name}] sweep run {plan.parent_run_id}: {finished} finished, {failed} failed"
                + (f", {missing} not run" if missing else "") + f", {len(plan.done)} skipped (already finished)"
                + (f"; its table is the run's artifact {T.TABLE_MD_ARTIFACT}" if tabled else ""),
                quiet,
            )
            say(f"[{plan.spec.name}] MLflow UI: {experiment_url(plan.tracking_uri, plan.experiment_id)}", quiet)
        say_ui_command(plans, quiet)
    finally:
        if started and not attached:
            shutdown()
    if totals["failed"]:
        print(f"{totals['failed']} trial(s) did not finish:", file=sys.stderr)
        for line in errors:
            print(f"  {line}", file=sys.stderr)
        print("re-run the same command to retry them (finished trials are not re-run)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    stop.install(stop.open_runs, lambda line: say(f"[sweep] {line}"))  # the command only: not a caller's process
    exit_process(main())
