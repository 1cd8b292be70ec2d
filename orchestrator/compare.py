"""`progan compare`: the trials of a sweep from MLflow, best first, with their varied hyperparameters."""

from __future__ import annotations

import json
import math
from typing import Any

from gan.errors import UserError

SWEEP_TAG = "progan.sweep"


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def newest_sweep(experiment: str) -> str:
    """Return the run id of the newest sweep parent run in `experiment`."""
    client = _client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise UserError(f"MLflow experiment {experiment!r} not found at {_tracking_uri()}")
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` != ''",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise UserError(f"no sweep runs in MLflow experiment {experiment!r}; start one with progan sweep")
    return runs[0].info.run_id


def _tracking_uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _value_at(history: list[tuple[int, float]], kimg: float) -> float | None:
    """Return the last value logged at or before step `kimg`."""
    before = [value for step, value in history if step <= kimg + 1e-9]
    return before[-1] if before else None


def compare_sweep(experiment: str, sweep_run_id: str | None, metric: str, at_kimg: float | None = None,
                  mode: str | None = None) -> list[dict[str, Any]]:
    """Return one row per trial of the sweep, best first (by the metric at `at_kimg`, else the best
    value at the final resolution)."""
    client = _client()
    sweep_run_id = sweep_run_id or newest_sweep(experiment)
    parent = client.get_run(sweep_run_id)
    searched = json.loads(parent.data.tags.get("progan.searched_keys", "[]"))
    mode = mode or parent.data.tags.get("progan.mode", "max" if metric.startswith("is") else "min")
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.`mlflow.parentRunId` = '{sweep_run_id}'",
                                  max_results=1000)
    best_key = f"best {metric} (full res)"
    last_key = f"last {metric}"
    rows = []
    for child in children:
        history = _history(client, child.info.run_id, metric)
        # Values measured before the final resolution compare upsampled low-resolution images, so
        # the best value is taken over full-resolution evaluations only (lod = 0).
        full_resolution_steps = {step for step, lod in _history(client, child.info.run_id, "lod") if lod == 0}
        values = [v for step, v in history if step in full_resolution_steps and math.isfinite(v)]
        best = None
        if values:
            best = min(values) if mode == "min" else max(values)
        row = {"trial": child.info.run_name, "run_id": child.info.run_id}
        for key in searched:
            value = child.data.params.get(key)
            if value is None:
                # PBT-mutated keys are logged as hp/<key> metrics; show the latest value.
                mutated = _history(client, child.info.run_id, f"hp/{key}")
                value = mutated[-1][1] if mutated else None
            row[key] = value
        row.update({"kimg": child.data.metrics.get("kimg"), best_key: best,
                    last_key: history[-1][1] if history else None, "status": child.info.status})
        if at_kimg is not None:
            row[f"{metric} @ {at_kimg:g} kimg"] = _value_at(history, at_kimg)
        rows.append(row)

    def rank(value):
        if value is None or not math.isfinite(value):
            return (1, 0.0)
        return (0, value if mode == "min" else -value)

    if at_kimg is not None:
        return sorted(rows, key=lambda row: rank(row[f"{metric} @ {at_kimg:g} kimg"]))
    # Trials that reached the final resolution first, by their best value there; then the others by
    # their last value.
    return sorted(rows, key=lambda row: (rank(row[best_key]), rank(row[last_key])))


def print_comparison(rows: list[dict[str, Any]], metric: str, output: str) -> None:
    from orchestrator.output import print_json, print_table

    if output == "json":
        print_json(rows)
        return
    if not rows:
        print("no trials found")
        return
    print_table([{k: v for k, v in row.items() if k != "run_id"} for row in rows],
                title=f"trials by {metric}, best first")
