"""Active-learning rounds: train -> score the pool -> select B -> obtain labels -> retrain -> append to the curve.

Contract
--------
* Round 0 trains on the initial labeled set: ``initial`` images drawn (seeded) from ``initial_split``, or every
  image the run's ``labeled.parquet`` already lists. Each later round predicts on the unlabeled ``pool_split``
  images and on their mirror images, scores them (:mod:`actors.active.scores`), selects ``budget`` with the
  strategy (a ``priority`` list first), obtains their labels and retrains on everything labeled so far (+ this
  run's pseudo-labels with ``pseudo=True``): from the seed, or with ``warm_start`` from the previous round's model.
* Labels come from the oracle: the catalog's human rows of the selected images (on the embedded world, its ground
  truth). An image is labelled when it has a human box or a ``status="empty"`` row (a labeler saw no object on
  it). A round whose labeled set holds unlabelled images waits: they are listed in ``runs/<run_id>/to_label.json``,
  the run stops before training that round (``LearnReport.waiting``), and running it again after ``assay labels
  import`` trains the round on them.
* Written under ``runs/<run_id>/``: ``config.json``, ``labeled.parquet`` (image_id, round, reason),
  ``curve.parquet`` (round, n_labeled, n, metric, value, seconds; n_labeled = n = the labelled images the round
  trained on, pseudo-labelled ones not counted; mAP@.5 in percent on ``eval_split``: what ``assay estimate`` /
  ``assay plan`` read), ``metrics.json`` (every COCO metric per round),
  ``round-<r>/scores.parquet`` and ``models/round-<r>.pt`` (the detector checkpoint, written every epoch).
* Resumable: a finished round is never redone; a round killed mid-training resumes from its last epoch; a run
  resumed between rounds scores the pool with the previous round's checkpoint.
* Scoring runs in-process, or as a Ray Data stage (:mod:`actors.active.ray_score`: batched actors, GPU when the
  cluster has one) with ``ray_scoring=True``; by default (None) on Ray when ``RAY_ADDRESS`` names a cluster.
  Both give the same scores.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from actors.active.pseudo import DEFAULT_THRESHOLD, add_pseudo_labels, pseudo_boxes, remove_pseudo_labels
from actors.active.scores import Detections, inconsistency_scores, uncertainty_scores
from actors.active.strategies import Candidates, select
from actors.core.errors import UserError
from actors.core.workspace import Workspace
from actors.detection.train import TrainConfig

CURVE_METRIC = "val_map50_pct"
CURVE_SCHEMA = pa.schema([("round", pa.int32()), ("n_labeled", pa.int64()), ("n", pa.int64()),
                          ("metric", pa.string()), ("value", pa.float64()), ("seconds", pa.float64())])
LABELED_SCHEMA = pa.schema([("image_id", pa.string()), ("round", pa.int32()), ("reason", pa.string())])


@dataclass
class LearnConfig:
    """One active-learning run; ``get_default_config()`` gives the shipped defaults."""

    rounds: int = 3
    budget: int = 20
    strategy: str = "uncertainty_robustness"
    pseudo: bool = False
    pseudo_threshold: float = DEFAULT_THRESHOLD
    initial: int = 20
    initial_split: str = "train"
    pool_split: str = "pool"
    eval_split: str = "val"
    max_pool: int | None = None
    max_eval: int | None = None
    detector: str = "dense-lite0"
    backbone: str = "efficientnet-lite0"
    seed: int = 0
    warm_start: bool = False  # rounds >= 1 fine-tune the previous round's model instead of training from the seed
    train: TrainConfig = field(default_factory=TrainConfig)

    @classmethod
    def get_default_config(cls) -> "LearnConfig":
        return cls()

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class LearnReport:
    """What :func:`run_learning` did: the curve (n labeled, mAP@.5 %), seconds per round, where it wrote."""

    run_id: str
    curve_path: str
    n_labeled: list[int]
    map50: list[float]
    map: list[float]
    seconds: list[float]
    selected: list[list[str]]
    classes: list[str]
    waiting: list[str] = field(default_factory=list)  # images the next round waits for (runs/<id>/to_label.json)


def _classes(ws: Workspace) -> list[str]:
    from actors.catalog.schema import load_labels

    cats = sorted({c for c in load_labels(ws, source="human").column("category").to_pylist() if c})
    if not cats:
        raise UserError(f"{ws.uri}: the catalog has no human labels; ingest a labeled set or run `assay world`")
    return cats


def _sample(rows: dict, n: int | None, seed: int, salt: int) -> list[str]:
    ids = sorted(rows)
    if n is None or n >= len(ids):
        return ids
    rng = np.random.default_rng([seed, salt])
    return sorted(ids[i] for i in rng.choice(len(ids), size=n, replace=False))


def _dets(p: dict) -> Detections:
    return Detections(p["boxes"], p["scores"], p["probs"])


class _Run:
    """The run's state in the workspace and the detector plumbing (features cached once)."""

    def __init__(self, ws: Workspace, cfg: LearnConfig, run_id: str, progress: bool) -> None:
        from actors.detection.data import FeatureCache, catalog_rows
        from actors.detection.models import get_detector

        self.ws, self.cfg, self.run_id, self.progress = ws, cfg, run_id, progress
        self.dir = f"runs/{run_id}"
        self.classes = _classes(ws)
        self.det = get_detector(cfg.detector, self.classes, backbone=cfg.backbone)
        self.cache = FeatureCache(ws, self.det) if self.det.cached else None
        self.rows = catalog_rows(ws)
        split = lambda s: {i: r for i, r in self.rows.items() if r["split"] == s}  # noqa: E731
        self.pool = {i: self.rows[i] for i in _sample(split(cfg.pool_split), cfg.max_pool, cfg.seed, 1)}
        self.eval = {i: self.rows[i] for i in _sample(split(cfg.eval_split), cfg.max_eval, cfg.seed, 2)}
        if not self.eval:
            raise UserError(f"{ws.uri}: no images in the evaluation split {cfg.eval_split!r}")
        self.initial = _sample(split(cfg.initial_split), cfg.initial, cfg.seed, 0)
        self.trained_round: int | None = None  # the round whose weights self.det holds

    # ---------------------------------------------------------------- state
    def labeled(self) -> list[dict]:
        rel = f"{self.dir}/labeled.parquet"
        return self.ws.read_table(rel).to_pylist() if self.ws.exists(rel) else []

    def add_labeled(self, ids: list[str], round_: int, reason: str) -> None:
        with self.ws.locked(f"{self.dir}/labeled.parquet"):  # `assay labels import --run` adds to it too
            old = self.labeled()
            seen = {r["image_id"] for r in old}
            new = [{"image_id": i, "round": round_, "reason": reason} for i in ids if i not in seen]
            self.ws.write_table(f"{self.dir}/labeled.parquet",
                                pa.Table.from_pylist(old + new, schema=LABELED_SCHEMA))

    def curve(self) -> list[dict]:
        rel = f"{self.dir}/curve.parquet"
        return self.ws.read_table(rel).to_pylist() if self.ws.exists(rel) else []

    # ---------------------------------------------------------------- data
    def data(self, ids: list[str], labels: dict | None = None, mirrored: bool = False):
        from actors.detection.data import build_data

        return build_data(self.det, [self.rows[i] for i in ids], labels, cache=self.cache, mirrored=mirrored)

    def labelled(self) -> tuple[list[str], list[str], dict]:
        """(labelled ids, unlabelled ids) of the labeled set, and the boxes of each (see the module contract)."""
        from actors.catalog.schema import EMPTY, load_labels
        from actors.detection.data import labels_by_image

        ids = [r["image_id"] for r in self.labeled() if r["image_id"] in self.rows]
        human = labels_by_image(self.ws, ids, self.classes)
        have = {i for i, (b, _) in human.items() if len(b)}
        have |= set(load_labels(self.ws, status=EMPTY).column("image_id").to_pylist())
        return [i for i in ids if i in have], [i for i in ids if i not in have], human

    def waiting(self) -> list[str]:
        """Unlabelled images of the labeled set, listed in ``to_label.json`` (removed when none wait)."""
        rel = f"{self.dir}/to_label.json"
        waiting = self.labelled()[1]
        if waiting:
            self.ws.write_json(rel, {"image_ids": waiting})
        elif self.ws.exists(rel):
            self.ws.delete(rel)
        return waiting

    def training_set(self) -> tuple[list[str], dict, int]:
        """Ids to train on (labelled, then this run's pseudo-labelled with ``pseudo``), their boxes, and how many
        of them are labelled."""
        ids, _, human = self.labelled()
        n_labelled = len(ids)
        if self.cfg.pseudo:
            extra = pseudo_boxes(self.ws, self.run_id, self.classes, exclude=set(ids))
            human.update(extra)
            ids = ids + sorted(i for i in extra if i in self.rows)
        return ids, human, n_labelled

    # ---------------------------------------------------------------- steps
    def load_round(self, round_: int) -> None:
        """Put the weights of round ``round_``'s checkpoint into the detector (no-op when it holds them)."""
        from actors.detection.train import read_checkpoint

        if self.trained_round != round_:
            self.det.load_trainable_state(read_checkpoint(self.ws, f"{self.dir}/models/round-{round_}.pt")["model"])
            self.det.eval()
            self.trained_round = round_

    def train(self, round_: int) -> None:
        from actors.detection.train import train_detector

        ids, labels, n_labelled = self.training_set()
        train_cfg = TrainConfig(**{**asdict(self.cfg.train), "seed": self.cfg.seed})
        warm = self.cfg.warm_start and round_ > 0
        if warm:
            self.load_round(round_ - 1)
        train_detector(self.det, self.data(ids, labels), train_cfg, ws=self.ws,
                       ckpt=f"{self.dir}/models/round-{round_}.pt", progress=self.progress, warm_start=warm)
        self.n_train = (n_labelled, len(ids))
        self.trained_round = round_

    def evaluate(self) -> dict:
        from actors.detection.data import labels_by_image
        from actors.detection.evaluate import evaluate_detections
        from actors.detection.train import predict

        ids = sorted(self.eval)
        gt = labels_by_image(self.ws, ids, self.classes)
        p = predict(self.det, self.data(ids))
        return evaluate_detections(gt, {k: (v["boxes"], v["scores"], v["labels"]) for k, v in p.items()},
                                   self.classes).to_dict()

    def candidates(self, round_: int, ray: bool = False) -> tuple[Candidates, dict]:
        """The unlabeled pool scored by the model of round ``round_ - 1`` (in-process, or on Ray Data)."""
        from actors.detection.train import predict

        done = {r["image_id"] for r in self.labeled()}
        ids = [i for i in sorted(self.pool) if i not in done]
        needs_flip = self.cfg.strategy in ("uncertainty_robustness", "weighted")
        ckpt = f"{self.dir}/models/round-{round_ - 1}.pt"
        if ray:
            from actors.active.ray_score import score_pool_on_ray

            ps = score_pool_on_ray(self.ws, ckpt, [self.rows[i] for i in ids], len(self.classes), flip=needs_flip)
            preds, flipped = ps.preds, ps.flipped
        else:
            self.load_round(round_ - 1)  # resumed between rounds: the previous round's weights
            preds = predict(self.det, self.data(ids))
            flipped = predict(self.det, self.data(ids, mirrored=True), mirrored=True) if needs_flip else {}
        emb = lab_emb = None
        if self.cfg.strategy == "coreset":
            if not self.det.cached:
                raise UserError("coreset needs a cached-feature detector (dense-lite0) for its embeddings")
            emb, lab_emb = self.embeddings(ids), self.embeddings(sorted(done))
        c = Candidates(ids, {k: _dets(v) for k, v in preds.items()}, {k: _dets(v) for k, v in flipped.items()},
                       emb, lab_emb)
        return c, preds

    def embeddings(self, ids: list[str]) -> np.ndarray:
        """N×C mean-pooled trunk maps of ``ids`` (the coreset's embeddings; any image sizes)."""
        maps = self.cache.maps([self.rows[i] for i in ids])
        return np.stack([m.float().mean((1, 2)).numpy() for m in maps]) if maps else np.zeros((0, 0), np.float32)

    def write_scores(self, round_: int, c: Candidates, picked: list[str]) -> None:
        u = uncertainty_scores(c.preds, c.ids)
        r = inconsistency_scores(c.preds, c.flipped, c.ids) if c.flipped else np.zeros(len(c.ids))
        chosen = set(picked)
        self.ws.write_table(f"{self.dir}/round-{round_}/scores.parquet", pa.table({
            "image_id": c.ids, "uncertainty": u, "inconsistency": r, "selected": [i in chosen for i in c.ids]}))


def run_learning(ws: Workspace | str, cfg: LearnConfig | None = None, *, run_id: str | None = None,
                 priority: list[str] | None = None, progress: bool = True,
                 on_round: Callable[[int, dict], None] | None = None,
                 ray_scoring: bool | None = None) -> LearnReport:
    """Run (or resume) ``cfg.rounds`` rounds after round 0; see the module contract. Returns early, with
    ``waiting`` set, when a round's labeled set holds images that still need labels.

    ``ray_scoring``: score the pool on Ray Data (True), in-process (False), or on Ray when ``RAY_ADDRESS`` is set
    (None).

    Raises
    ------
    UserError
        No human labels, no evaluation images, or a run id reused with another configuration.
    """
    ws = Workspace(ws) if isinstance(ws, str) else ws
    cfg = cfg or LearnConfig()
    run_id = run_id or f"learn-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run = _Run(ws, cfg, run_id, progress)
    use_ray = bool(os.environ.get("RAY_ADDRESS")) if ray_scoring is None else ray_scoring
    conf_rel = f"runs/{run_id}/config.json"
    if ws.exists(conf_rel) and ws.read_json(conf_rel) != _jsonable(cfg.to_dict()):
        raise UserError(f"{ws.path(conf_rel)}: run {run_id!r} exists with another configuration; use a new --run")
    ws.write_json(conf_rel, cfg.to_dict())
    if not run.labeled():
        run.add_labeled(run.initial, 0, "initial")
    curve = run.curve()
    metrics = ws.read_json(f"runs/{run_id}/metrics.json") if ws.exists(f"runs/{run_id}/metrics.json") else []
    selected: list[list[str]] = []
    waiting: list[str] = []
    rng = np.random.default_rng([cfg.seed, 7])
    for round_ in range(cfg.rounds + 1):
        t0 = time.monotonic()
        if round_ < len(curve):
            continue  # finished before a restart
        if round_ > 0 and not any(r["round"] == round_ for r in run.labeled()):
            c, preds = run.candidates(round_, ray=use_ray)
            picked = select(cfg.strategy, c, cfg.budget, np.random.default_rng([cfg.seed, 7, round_]),
                            priority=priority)
            run.write_scores(round_, c, picked)
            run.add_labeled(picked, round_, "priority" if priority and set(picked) & set(priority) else cfg.strategy)
            if cfg.pseudo:
                done = {r["image_id"] for r in run.labeled()}
                add_pseudo_labels(ws, preds, run.classes, run_id, threshold=cfg.pseudo_threshold, exclude=done)
            selected.append(picked)
        waiting = run.waiting()
        if waiting:
            break  # the round trains once its labels are imported and the run is run again
        run.train(round_)
        m = run.evaluate()
        n_labeled = run.n_train[0]  # the labelled images this round trained on
        row = {"round": round_, "n_labeled": n_labeled, "n": n_labeled, "metric": CURVE_METRIC,
               "value": 100.0 * m["map50"], "seconds": time.monotonic() - t0}
        curve.append(row)
        metrics.append({"round": round_, "n_labeled": n_labeled, "n_trained": run.n_train[1], **m})
        ws.write_json(f"runs/{run_id}/metrics.json", metrics)
        ws.write_table(f"runs/{run_id}/curve.parquet", pa.Table.from_pylist(curve, schema=CURVE_SCHEMA))
        if on_round is not None:
            on_round(round_, row)
    del rng
    return LearnReport(run_id=run_id, curve_path=ws.path(f"runs/{run_id}/curve.parquet"),
                       n_labeled=[int(r["n_labeled"]) for r in curve], map50=[r["value"] for r in curve],
                       map=[100.0 * m["map"] for m in metrics], seconds=[r["seconds"] for r in curve],
                       selected=selected, classes=run.classes, waiting=waiting)


def _jsonable(d: Any) -> Any:
    import json

    return json.loads(json.dumps(d))


__all__ = ["LearnConfig", "LearnReport", "run_learning", "CURVE_METRIC", "CURVE_SCHEMA", "remove_pseudo_labels"]
