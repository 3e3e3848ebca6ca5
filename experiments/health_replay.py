"""The health monitor against the runs' outcomes (issue 42): replays warning rules over every recorded run
that kept its health signals at each check (``health_curve``, written by ``ablation.run_one``), and counts,
per testbed, false alarms (a warning in a run that ended at or above supervised) and misses (no warning in
a run that ended below it). Supervised is the same testbed's supervised run with the same seed.

    python experiments/health_replay.py

Rules compared: the instant rule the monitor used until issue 42 (every check with a vanished or
taken-over class warns) and ``HealthWarnings`` (the same problems, reported only from a share of the
planned steps on and when found at the check before), at several grace shares. A second table applies the
instant rule to the last check of every recorded run (those without a curve included), which is all the
older runs kept.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from maskmatch_pl.health import HealthWarnings, find_problems  # noqa: E402

RESULTS = REPO / "experiments" / "results"
# testbed -> (folders of its semi-supervised runs, folder of its supervised runs, score key)
BEDS = {
    "demo": (["threshold-rules/demo", "rerun-current", "defaults/demo"], "rerun-current", "val/mIoU"),
    "letters": (["threshold-rules/letters", "defaults/letters", "second-dataset"], "second-dataset", "val/mIoU"),
    "faces": (["threshold-rules/faces", "faces"], "faces", "val/mIoU"),
    "defects": (["threshold-rules/defects", "defects"], "defects", "val/IoU_defect"),
    "scenes": (["threshold-rules/scenes", "scenes"], "scenes", "val/mIoU"),
}
GRACES = (0.0, 0.25, 0.4, 0.5)
MARGIN = 2.0  # points: "clearly below supervised", beyond one seed's noise on these testbeds


def _runs(folder: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((RESULTS / folder).glob("*/*/seed*/result.json"))]


def _score(result: dict, key: str) -> float:
    return result.get("final", {}).get(key, result["miou"]) * 100


def _check_problems(values: dict[str, float], class_names: list[str]) -> list:
    labeled = [values.get(f"health/labeled_share_{name}", 0.0) for name in class_names]
    confident = [values.get(f"health/confident_share_{name}", 0.0) for name in class_names]
    return find_problems(labeled, confident, class_names, values.get("health/confident_pixels", 1.0))


def _class_names(values: dict[str, float]) -> list[str]:
    return [key.removeprefix("health/labeled_share_") for key in values if key.startswith("health/labeled_share_")]


def warnings(result: dict, grace: float | None) -> int:
    """Warnings the rule gives over the run's checks: ``None`` is the instant rule (one per check with
    a problem), a float ``HealthWarnings(grace)``."""
    rule, count = HealthWarnings(grace if grace is not None else 0.0), 0
    for step, values in result["health_curve"]:
        problems = _check_problems(values, _class_names(values))
        if grace is None:
            count += bool(problems)
        else:
            # the CSV logs a check at global_step - 1 (249 for the validation after step 250): the monitor
            # judges progress from global_step
            count += bool(rule.check(problems, (step + 1) / result["steps"]))
    return count


def labelled_runs() -> dict[str, list[tuple[dict, float]]]:
    """Per testbed: (run, its score minus its seed's supervised score) for every semi-supervised run."""
    found = {}
    for bed, (folders, supervised_folder, key) in BEDS.items():
        supervised = {r["seed"]: _score(r, key) for r in _runs(supervised_folder) if r["method"] == "supervised"}
        rows, seen = [], set()
        for folder in folders:
            for result in _runs(folder):
                name = (folder, result["method"], result["seed"])
                if result["method"].startswith("supervised") or result["seed"] not in supervised or name in seen:
                    continue
                seen.add(name)
                result["folder"] = folder
                rows.append((result, _score(result, key) - supervised[result["seed"]]))
        found[bed] = rows
    return found


def curve_table(runs: dict[str, list[tuple[dict, float]]]) -> str:
    """False alarms (warned, ended at or above supervised) and misses (silent, ended below it; in
    brackets: of the runs more than ``MARGIN`` points below) per rule."""
    rules = [("instant (until issue 42)", None)] + [(f"grace {g:.0%}, two checks in a row", g) for g in GRACES]
    lines = [
        "| testbed | runs with a curve (below supervised; by > 2 points) | "
        + " | ".join(f"{name}: false alarms / misses (> 2 points)" for name, _ in rules)
        + " |",
        "|---" * (len(rules) + 2) + "|",
    ]
    for bed, rows in runs.items():
        rows = [(r, gain) for r, gain in rows if r.get("health_curve")]
        if not rows:
            continue
        cells = []
        for _, grace in rules:
            warned = [(warnings(r, grace) > 0, gain) for r, gain in rows]
            false_alarms = sum(w and gain >= 0 for w, gain in warned)
            misses = sum(not w and gain < 0 for w, gain in warned)
            clear_misses = sum(not w and gain < -MARGIN for w, gain in warned)
            cells.append(f"{false_alarms} / {misses} ({clear_misses})")
        below = sum(gain < 0 for _, gain in rows)
        clearly = sum(gain < -MARGIN for _, gain in rows)
        lines.append(f"| {bed} | {len(rows)} ({below}; {clearly}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def last_check_table(runs: dict[str, list[tuple[dict, float]]]) -> str:
    lines = [
        "| testbed | runs (ended below supervised) | warned at the last check: above / below supervised |",
        "|---|---|---|",
    ]
    for bed, rows in runs.items():
        rows = [(r, gain) for r, gain in rows if r.get("health")]
        if not rows:
            continue
        warned = [(bool(_check_problems(r["health"], _class_names(r["health"]))), gain < 0) for r, gain in rows]
        above_warned = sum(w and not b for w, b in warned)
        below_warned = sum(w and b for w, b in warned)
        below = sum(b for _, b in warned)
        lines.append(
            f"| {bed} | {len(rows)} ({below}) | {above_warned} of {len(rows) - below} / {below_warned} of {below} |"
        )
    return "\n".join(lines)


def per_run(runs: dict[str, list[tuple[dict, float]]]) -> str:
    lines = [
        "| testbed | row | seed | minus supervised | warnings: instant | grace 50 % |",
        "|---|---|---|---|---|---|",
    ]
    for bed, rows in runs.items():
        for result, gain in rows:
            if result.get("health_curve"):
                lines.append(
                    f"| {bed} | {result['method']} | {result['seed']} | {gain:+.1f} | "
                    f"{warnings(result, None)} | {warnings(result, 0.5)} |"
                )
    return "\n".join(lines)


def main() -> None:
    runs = labelled_runs()
    print("Warnings per rule over every check of the runs that kept their curves:\n")
    print(curve_table(runs))
    print("\nPer run (warnings over the run):\n")
    print(per_run(runs))
    print("\nThe instant rule at the last check of every recorded run:\n")
    print(last_check_table(runs))
    counts = [len(r["health_curve"]) for rows in runs.values() for r, _ in rows if r.get("health_curve")]
    if counts:
        print(f"\nchecks per run: median {statistics.median(counts)}")


if __name__ == "__main__":
    main()
