"""`python -m sweep +grid=phase2b [override ...]`: parse, build, run, close.

Exit codes: 0 when every point is ok or skipped, 1 when any point failed (the
summary lists them), 2 for config or input errors found before any work.
"""

from __future__ import annotations

import signal
import sys

from sweep.plan.config import ConfigError, load_config

USAGE = """usage: python -m sweep [+grid=NAME] [key=value ...]

  +grid=phase2b | smoke | ...   a grid from conf/grid/
  grid.variants=[int4,fp32]     grid.devices=[cpu]     grid.prompt_lengths=[32,128]
  grid.max_seq=256              "+grid.flag_sets.mine=['--iree-opt-level=O3']"
  bench.warmup_steps=3          bench.decode_steps=40  model.path=DIR
  ray.address=auto              results_dir=outputs/results   rerun=true   dry_run=true
  +search=flags search.trials=32   search the space of conf/search/flags.yaml
  profile=true                  IREE's per-dispatch profile of every ok point
  compile=cache_only            every graph from cache_dir, never iree-compile
"""


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in overrides):
        print(USAGE)
        return 0
    try:
        cfg, resolved = load_config(overrides)
        from sweep.run import run_sweep

        outcome = run_sweep(cfg, resolved)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(
        f"run {outcome.run_id}: {len(outcome.rows)} rows in {cfg.results_dir} "
        f"({outcome.wall_s:.1f} s)"
    )
    return outcome.exit_code


if __name__ == "__main__":
    # SIGTERM (kill, a job scheduler) stops like Ctrl-C: finished rows stay written and
    # a Ray started by this sweep is shut down instead of left running. SIGINT is set
    # explicitly too: a process started in the background inherits it ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    sys.exit(main())
