"""Method comparison on one benchmark with one budget: the table of methods (both branches), the
order their runs need, the ranking and the markdown / JSON tables.

A method is one :class:`MethodEntry`: a config file, the run whose ``model_final.pth`` it starts
from (``parent``), and the anomaly score its row reads (``score``, set as ``MODEL.OOD.SCORES``). Running is left to
a ``runner`` callable (``tools/compare_methods.py`` trains and evaluates with the plugin's
trainer), so planning, ranking and writing work on any results.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ..utils import tables
from ..utils.atomic_write import write_text_atomically

__all__ = [
    "METRIC_COLUMNS",
    "MethodEntry",
    "Budget",
    "PRESETS",
    "DEFAULT_METHODS",
    "plan_runs",
    "run_overrides",
    "row_from_results",
    "rank_rows",
    "markdown_table",
    "write_tables",
    "run_comparison",
]

# (result key, column title, True when higher is better); percentages as the evaluators give them.
METRIC_COLUMNS: Tuple[Tuple[str, str, bool], ...] = (
    ("AP", "AP", True),
    ("FPR95", "FPR95", False),
    ("AUROC", "AUROC", True),
    ("sIoU", "sIoU", True),
    ("PPV", "PPV", True),
    ("mean_F1", "mean F1", True),
    ("mIoU", "mIoU (closed set)", True),
)
_HIGHER_IS_BETTER = {key: higher for key, _, higher in METRIC_COLUMNS}


@dataclass(frozen=True)
class MethodEntry:
    """One row of the comparison.

    Attributes:
        name: row name, also the run's folder name.
        branch: "pixel" (DeepLabV3+) or "mask2former".
        config: config file, relative to the repository root.
        parent: name of the entry whose ``model_final.pth`` becomes ``MODEL.WEIGHTS``.
        score: the registered anomaly score the row evaluates (``MODEL.OOD.SCORES [score]``);
            None = the model's configured ones, the row reading the first.
        train: False evaluates the parent's model with this config (e.g. another score).
        opts: extra KEY VALUE overrides of this entry.
    """

    name: str
    branch: str
    config: str
    parent: Optional[str] = None
    score: Optional[str] = None
    train: bool = True
    opts: Tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Budget:
    """Iterations of from-scratch (closed-set) runs and of fine-tuning runs; None = the config's."""

    base_iters: Optional[int]
    finetune_iters: Optional[int]

    def iters_for(self, entry: MethodEntry) -> Optional[int]:
        return self.base_iters if entry.parent is None else self.finetune_iters


PRESETS: Dict[str, Budget] = {
    "quick": Budget(base_iters=300, finetune_iters=100),  # minutes per method on a CPU
    "full": Budget(base_iters=None, finetune_iters=None),  # the configs' own schedules
}

_PIXEL = "configs/synthcity/pixel"
_M2F = "configs/synthcity/mask2former"
DEFAULT_METHODS: Tuple[MethodEntry, ...] = (
    MethodEntry("pixel_closed_set_maxlogit", "pixel", f"{_PIXEL}/closed_set.yaml", score="maxlogit"),
    MethodEntry("pixel_rpl", "pixel", f"{_PIXEL}/rpl.yaml", parent="pixel_closed_set_maxlogit", score="energy"),
    MethodEntry("pixel_rpl_corocl", "pixel", f"{_PIXEL}/rpl_corocl.yaml", parent="pixel_closed_set_maxlogit",
                score="energy"),
    MethodEntry("pixel_pebal", "pixel", f"{_PIXEL}/pebal.yaml", parent="pixel_closed_set_maxlogit", score="energy"),
    MethodEntry("pixel_densehybrid", "pixel", f"{_PIXEL}/densehybrid.yaml", parent="pixel_closed_set_maxlogit",
                score="densehybrid_official"),
    MethodEntry("pixel_raml", "pixel", f"{_PIXEL}/raml.yaml", parent="pixel_closed_set_maxlogit", score="raml"),
    MethodEntry("pixel_vca", "pixel", f"{_PIXEL}/vca.yaml", parent="pixel_closed_set_maxlogit",
                score="unknown_probability"),
    # Mask2Former: the closed-set model scored with RbA, then MSP on the same model, then the
    # outlier fine-tunes with their own scores.
    MethodEntry("m2f_closed_set_rba", "mask2former", f"{_M2F}/maskformer2_R18_1dl.yaml", score="rba"),
    MethodEntry("m2f_closed_set_msp", "mask2former", f"{_M2F}/maskformer2_R18_1dl.yaml",
                parent="m2f_closed_set_rba", train=False, score="msp"),
    MethodEntry("m2f_rba_finetune", "mask2former", f"{_M2F}/maskformer2_R18_1dl_rba_finetune.yaml",
                parent="m2f_closed_set_rba", score="rba"),
    MethodEntry("m2f_pebal_finetune", "mask2former", f"{_M2F}/maskformer2_R18_1dl_pebal_finetune.yaml",
                parent="m2f_closed_set_rba", score="energy"),
    MethodEntry("m2f_densehybrid_finetune", "mask2former", f"{_M2F}/maskformer2_R18_1dl_densehybrid_finetune.yaml",
                parent="m2f_closed_set_rba", score="densehybrid"),
)


def plan_runs(entries: Sequence[MethodEntry], repo_root: str) -> Tuple[List[MethodEntry], Dict[str, str]]:
    """(entries to run, parents first; {name: reason} of those skipped).

    Skipped: a config file that does not exist (yet), a parent that is unknown or skipped.
    Raises ValueError on duplicate names or a parent cycle.
    """
    by_name: Dict[str, MethodEntry] = {}
    for entry in entries:
        if entry.name in by_name:
            raise ValueError(f"method '{entry.name}' is listed twice")
        by_name[entry.name] = entry
    skipped: Dict[str, str] = {}
    ordered: List[MethodEntry] = []
    state: Dict[str, str] = {}  # name -> "visiting" | "done"

    def visit(entry: MethodEntry) -> None:
        if state.get(entry.name) == "done":
            return
        if state.get(entry.name) == "visiting":
            raise ValueError(f"method '{entry.name}': its parents form a cycle")
        state[entry.name] = "visiting"
        config_path = os.path.join(repo_root, entry.config)
        if not os.path.isfile(config_path):
            skipped[entry.name] = f"config {entry.config} does not exist (yet)"
        elif entry.parent is not None and entry.parent not in by_name:
            skipped[entry.name] = f"parent '{entry.parent}' is not in the method table"
        elif entry.parent is not None:
            visit(by_name[entry.parent])
            if entry.parent in skipped:
                skipped[entry.name] = f"parent '{entry.parent}' is skipped"
        if entry.name not in skipped:
            ordered.append(entry)
        state[entry.name] = "done"

    for entry in entries:
        visit(entry)
    return ordered, skipped


def run_overrides(entry: MethodEntry, budget: Budget, run_dir: str, parent_dir: Optional[str]) -> List[str]:
    """The KEY VALUE overrides the comparison applies to an entry's config (after the user's)."""
    opts = list(entry.opts) + ["OUTPUT_DIR", run_dir, "TEST.EVAL_PERIOD", "0"]
    iters = budget.iters_for(entry)
    if iters is not None:
        opts += ["SOLVER.MAX_ITER", str(iters)]
    if parent_dir is not None:
        opts += ["MODEL.WEIGHTS", os.path.join(parent_dir, "model_final.pth")]
    if entry.score is not None:
        opts += ["MODEL.OOD.SCORES", repr([entry.score])]
    return opts


def row_from_results(entry: MethodEntry, results: Mapping[str, Mapping], ood_dataset: str,
                     miou_dataset: Optional[str]) -> dict:
    """A table row from ``{dataset: evaluator results}`` (Detectron2's test() layout).

    OOD metrics come from ``ood_dataset`` (OODEvaluator: ``{dataset: {metric: value}}``); mIoU
    from ``miou_dataset`` (SemSegEvaluator: ``{"sem_seg": {"mIoU": ...}}``) when given, else from
    the OOD dataset's own semantic labels.
    """
    if ood_dataset not in results:
        raise KeyError(f"{entry.name}: no results for OOD dataset '{ood_dataset}' (have {sorted(results)})")
    ood = results[ood_dataset].get(ood_dataset, results[ood_dataset])
    missing = [key for key, _, _ in METRIC_COLUMNS[:-1] if key not in ood]
    if missing:
        raise KeyError(f"{entry.name}: OOD results of '{ood_dataset}' lack {missing} (have {sorted(ood)})")
    metrics = {key: float(ood[key]) for key, _, _ in METRIC_COLUMNS[:-1]}
    if miou_dataset is not None:
        if miou_dataset not in results or "mIoU" not in results[miou_dataset].get("sem_seg", {}):
            raise KeyError(f"{entry.name}: no semantic-segmentation mIoU for '{miou_dataset}'")
        metrics["mIoU"] = float(results[miou_dataset]["sem_seg"]["mIoU"])
    else:
        metrics["mIoU"] = float(ood.get("mIoU", float("nan")))
    row = {"name": entry.name, "branch": entry.branch, "config": entry.config, "parent": entry.parent,
           "score": entry.score or "default", "metrics": metrics}
    if "unknown_IoU" in ood:
        row["unknown_IoU"] = float(ood["unknown_IoU"])
    return row


def rank_rows(rows: Sequence[dict], rank_by: str = "AP") -> List[dict]:
    """Rows sorted best first by ``rank_by`` (its direction from METRIC_COLUMNS; NaN last, ties by
    name), each with its 1-based "rank" (NaN rows share no rank: None)."""
    if rank_by not in _HIGHER_IS_BETTER:
        raise ValueError(f"cannot rank by '{rank_by}' (one of {list(_HIGHER_IS_BETTER)})")
    sign = -1.0 if _HIGHER_IS_BETTER[rank_by] else 1.0

    def key(row):
        value = row["metrics"][rank_by]
        return (math.isnan(value), sign * value if not math.isnan(value) else 0.0, row["name"])

    ranked = []
    for position, row in enumerate(sorted(rows, key=key), start=1):
        ranked.append({**row, "rank": None if math.isnan(row["metrics"][rank_by]) else position})
    return ranked


def markdown_table(ranked: Sequence[dict], rank_by: str, header: Sequence[str] = (),
                   skipped: Mapping[str, str] = {}, failed: Mapping[str, str] = {}) -> str:
    """The ranked rows as a markdown table, with the header lines and the skipped / failed runs."""
    arrows = {key: ("↑" if higher else "↓") for key, _, higher in METRIC_COLUMNS}
    titles = [f"{title} {arrows[key]}" for key, title, _ in METRIC_COLUMNS]
    lines = ["# Method comparison", ""] + [f"{line}  " for line in header]
    lines += ["", f"Ranked by {rank_by}. Percentages; ↑ higher is better, ↓ lower is better.", ""]
    rows = [["-" if row["rank"] is None else str(row["rank"]), row["name"], row["branch"], row["score"]]
            + [row["metrics"][key] for key, _, _ in METRIC_COLUMNS] for row in ranked]
    lines.append(tables.markdown_table(["rank", "method", "branch", "score"] + titles, rows))
    extra = [row for row in ranked if "unknown_IoU" in row]
    if extra:
        lines += ["", "Open-set unknown IoU: " + ", ".join(
            f"{r['name']} {tables.format_number(r['unknown_IoU'])}" for r in extra)]
    for title, items in (("Skipped", skipped), ("Failed", failed)):
        if items:
            lines += ["", f"{title}:"] + [f"- {name}: {reason}" for name, reason in items.items()]
    return "\n".join(lines) + "\n"


def write_tables(ranked: Sequence[dict], out_dir: str, rank_by: str, meta: Mapping = {},
                 skipped: Mapping[str, str] = {}, failed: Mapping[str, str] = {}) -> Tuple[str, str]:
    """Writes ``comparison.md`` and ``comparison.json`` into ``out_dir`` (each atomically);
    returns their paths. NaN is written to JSON as null."""
    os.makedirs(out_dir, exist_ok=True)
    header = [f"{key}: {value}" for key, value in meta.items()]
    md_path = os.path.join(out_dir, "comparison.md")
    json_path = os.path.join(out_dir, "comparison.json")
    write_text_atomically(md_path, markdown_table(ranked, rank_by, header, skipped, failed))
    payload = {"rank_by": rank_by, "meta": dict(meta), "rows": list(ranked), "skipped": dict(skipped),
               "failed": dict(failed)}
    tables.write_json(json_path, payload)
    return md_path, json_path


# runner(entry, config_path, opts, ood_dataset, miou_dataset) -> {dataset: evaluator results}
Runner = Callable[[MethodEntry, str, List[str], str, Optional[str]], Mapping[str, Mapping]]


def run_comparison(
    entries: Sequence[MethodEntry],
    runner: Runner,
    *,
    repo_root: str,
    out_dir: str,
    budget: Budget,
    ood_dataset: str,
    miou_dataset: Optional[str],
    user_opts: Sequence[str] = (),
    rank_by: str = "AP",
    meta: Mapping = {},
    log: Callable[[str], None] = print,
) -> dict:
    """Runs every plannable entry (parents first), ranks and writes the tables.

    A failing run is reported (and its children skipped) without stopping the others. Returns
    ``{"rows", "skipped", "failed", "markdown", "json"}``.
    """
    ordered, skipped = plan_runs(entries, repo_root)
    for name, reason in skipped.items():
        log(f"[compare] skipping {name}: {reason}")
    failed: Dict[str, str] = {}
    rows = []
    for entry in ordered:
        if entry.parent in failed or entry.parent in skipped:
            skipped[entry.name] = f"parent '{entry.parent}' did not run"
            log(f"[compare] skipping {entry.name}: {skipped[entry.name]}")
            continue
        run_dir = os.path.join(out_dir, "runs", entry.name)
        parent_dir = os.path.join(out_dir, "runs", entry.parent) if entry.parent else None
        opts = list(user_opts) + run_overrides(entry, budget, run_dir, parent_dir)
        log(f"[compare] {entry.name}: {entry.config} ({'train + evaluate' if entry.train else 'evaluate'})")
        try:
            results = runner(entry, os.path.join(repo_root, entry.config), opts, ood_dataset, miou_dataset)
            rows.append(row_from_results(entry, results, ood_dataset, miou_dataset))
        except Exception as error:  # one broken method must not cost the others' results
            failed[entry.name] = f"{type(error).__name__}: {error}"
            log(f"[compare] {entry.name} FAILED: {failed[entry.name]}")
    ranked = rank_rows(rows, rank_by)
    full_meta = {"budget": asdict(budget), "ood_dataset": ood_dataset, "miou_dataset": miou_dataset, **meta}
    md_path, json_path = write_tables(ranked, out_dir, rank_by, full_meta, skipped, failed)
    log(f"[compare] tables written to {md_path} and {json_path}")
    return {"rows": ranked, "skipped": skipped, "failed": failed, "markdown": md_path, "json": json_path}
