"""Targeted selection: a query image + boxes -> the pool images holding a similar object, ranked and localized.

``method="template"`` (default): each box becomes a :class:`actors.selection.match.BoxTemplate` (its ROI-averaged feature,
centred with the pool's mean cell vector stored in the region index's manifest, unit norm) -> coarse stage = FAISS
inner-product search of that vector among the (equally centred, unit) index cells, per image the best cell, top-N
candidates (N = max(10·K, 200)) -> fine stage = cosine with the mean of every window of the box's size (three
scales) over each candidate's feature map (:class:`actors.selection.matcher.Matcher`, or :class:`actors.selection.actor.MatchActor`
workers for a batch of queries) -> image score = best window; matched box = the query box's size centred on it ->
re-rank (``Query.rerank`` best hits, default :data:`actors.selection.rerank.RERANK_TOP`): each matched box cropped
at the object's own scale and compared with the query box's crop (:func:`actors.selection.rerank.rerank_hits`);
those hits' scores are crop cosines in [-1, 1], the same scale for every query; ``negatives`` push down hits that
look more like a "not this" box. :func:`more_like` runs one query per chosen hit of a saved selection and merges.

``method="global"``: the whole-image baseline in the same code path: mean-pooled, L2-normalised region grid of
the query image searched in the global index (``index/<model>-global/``); the "matched region" is the whole image.

Outputs in the workspace: ``selections/<query_id>.parquet`` (image_id, uri, rank, score, x0, y0, x1, y1,
object_boxes) and ``queries/<query_id>.json`` (image uri, boxes, negatives, model, method, rerank, k), ``query_id`` =
a stable hash of the query content (image bytes, boxes, negatives, model, method, combine, rerank).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from actors.catalog.schema import IMAGES, attach_uris
from actors.core.errors import UserError
from actors.features.store import FeatureMap, iter_feature_maps
from actors.selection.index import LoadedIndex, cell_vectors, load_index, normalize
from actors.selection.rerank import RERANK_TOP
from actors.selection.match import COMBINE, SCALES, BoxTemplate, Hit, box_template
from actors.selection.matcher import Matcher
from actors.core.workspace import Workspace

METHODS = ("template", "global")
# the feature store a query reads when none is named: the one `assay embed` makes by default
# (store_name(actors.features.embed.DEFAULT_BACKBONE): the frozen ImageNet Lite0 trunk at stride 16)
DEFAULT_MODEL = "efficientnet-lite0"
SELECTION_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("rank", pa.int32()), ("score", pa.float32()),
    ("x0", pa.float32()), ("y0", pa.float32()), ("x1", pa.float32()), ("y1", pa.float32()),
    ("object_boxes", pa.list_(pa.float32())),
])


@dataclass
class Query:
    """One targeted-selection query: an image (path/URI, or a pool image_id) and the boxes to find together."""

    image: str
    boxes: list[tuple[float, float, float, float]]
    top_k: int = 100
    model: str = DEFAULT_MODEL
    method: str = "template"
    combine: str = "min"
    fmap: FeatureMap | None = field(default=None, repr=False)  # query features given directly (tests, bench)
    image_size: tuple[float, float] | None = None  # (width, height) in pixels
    rerank: int = RERANK_TOP  # best dense hits re-scored at the object's own scale (actors.selection.rerank); 0: off
    negatives: list[tuple[float, float, float, float]] = field(default_factory=list)  # "not this" boxes (re-rank)


@dataclass
class Selection:
    """A query's result: hits best first, where they were written, and how long each stage took."""

    query_id: str
    query: dict
    hits: list[Hit]
    coarse_s: float = 0.0
    fine_s: float = 0.0
    n_candidates: int = 0
    rerank_s: float = 0.0
    reranked: int = 0  # the first ``reranked`` hits carry crop-cosine scores in [-1, 1]; any after them, dense scores

    def table(self) -> pa.Table:
        rows = [{"image_id": h.image_id, "rank": r + 1, "score": h.score, "x0": h.box[0], "y0": h.box[1],
                 "x1": h.box[2], "y1": h.box[3], "object_boxes": [v for b in h.object_boxes for v in b]}
                for r, h in enumerate(self.hits)]
        return pa.Table.from_pylist(rows, schema=SELECTION_SCHEMA)


def mine(ws: Workspace, *, image: str | None = None, boxes: Sequence[Sequence[float]] = (), top_k: int = 100,
         model: str = DEFAULT_MODEL, method: str = "template", combine: str = "min",
         fmap: FeatureMap | None = None, image_size: tuple[float, float] | None = None,
         n_candidates: int | None = None, scales: Sequence[float] = SCALES, write: bool = True) -> Selection:
    """Find the ``top_k`` pool images holding objects like the ``boxes`` of the query ``image``.

    Parameters
    ----------
    image : path/URI of the query image (encoded like the pool by the model's region encoder), or the image_id
        of an embedded pool image (its stored features are used). Not needed when ``fmap`` is given.
    boxes : one or more ``(x0, y0, x1, y1)`` pixel boxes; several boxes must co-occur (score = ``combine`` of
        each object's best score, "min" or "mean"). Ignored by ``method="global"``.
    fmap : the query's feature map, when already computed.
    n_candidates : coarse-stage candidates for the fine stage; default max(10·top_k, 200).

    Returns
    -------
    Selection; also written to ``selections/<query_id>.parquet`` and ``queries/<query_id>.json`` when ``write``.
    Raises ``ValueError`` for a bad box / method / empty index, ``WorkspaceError`` when no index exists.
    """
    q = Query(image or (fmap.image_id if fmap else ""), [tuple(map(float, b)) for b in boxes], top_k, model,
              method, combine, fmap, image_size)
    return mine_batch(ws, [q], n_candidates=n_candidates, scales=scales, write=write)[0]


def more_like(ws: Workspace, selection: str, ids: Sequence[str], *, top_k: int = 100, model: str = DEFAULT_MODEL,
              rerank: int = RERANK_TOP, n_candidates: int | None = None, write: bool = True) -> Selection:
    """"More like these hits": pool images like the hits ``ids`` of the saved selection ``selections/<selection>``.

    Each chosen hit becomes a query (its pool image, its matched box); the results are merged by each image's best
    score (the re-rank's crop cosines share one scale across queries, so a maximum is meaningful) and the chosen
    hits themselves are left out. Written as ``selections/<query_id>.parquet`` like any query when ``write``.
    Raises ``UserError`` for a missing selection or an id that is not one of its hits.
    """
    rel = f"selections/{selection}.parquet"
    if not ws.exists(rel):
        raise UserError(f"{ws.path(rel)}: no such selection (its query id, as assay mine printed it)")
    rows = {r["image_id"]: r for r in ws.read_table(rel).to_pylist()}
    bad = [i for i in ids if i not in rows]
    if not ids or bad:
        raise UserError(f"--ids {','.join(bad) or '(none)'}: give hits of selection {selection} "
                        f"(e.g. {', '.join(list(rows)[:3])})")
    qs = [Query(i, [tuple(float(rows[i][k]) for k in ("x0", "y0", "x1", "y1"))], top_k + len(ids), model,
                rerank=rerank) for i in ids]
    sels = mine_batch(ws, qs, n_candidates=n_candidates, write=False)
    best: dict[str, Hit] = {}
    for s in sels:
        for h in s.hits:
            if h.image_id not in ids and (h.image_id not in best or h.score > best[h.image_id].score):
                best[h.image_id] = h
    record = {"more_like": selection, "ids": list(ids), "model": model, "k": top_k, "rerank": rerank,
              "method": "template"}
    qid = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    out = Selection(qid, record, sorted(best.values(), key=lambda h: -h.score)[:top_k],
                    coarse_s=sum(s.coarse_s for s in sels), fine_s=sum(s.fine_s for s in sels),
                    n_candidates=sum(s.n_candidates for s in sels), rerank_s=sum(s.rerank_s for s in sels),
                    reranked=max(s.reranked for s in sels))
    if write:
        ws.write_table(f"selections/{qid}.parquet", attach_uris(ws, out.table()))
        ws.write_json(f"queries/{qid}.json", record)
    return out


def mine_batch(ws: Workspace, queries: Sequence[Query], *, workers: int = 0, n_candidates: int | None = None,
               scales: Sequence[float] = SCALES, write: bool = True) -> list[Selection]:
    """Run several queries in one job: indexes are loaded once; with ``workers > 0`` the fine stages run on that
    many :class:`~actors.selection.actor.MatchActor` Ray actors (one ``ray.get`` for all), else in this process."""
    sel = Selector(ws, workers=workers)
    try:
        return sel.run(queries, n_candidates=n_candidates, scales=scales, write=write)
    finally:
        sel.close()


class Selector:
    """Keeps the loaded indexes, matchers (feature-map caches) and Ray match actors across queries."""

    def __init__(self, ws: Workspace, *, workers: int = 0, preload: bool = False, cache_size: int = 4096) -> None:
        self.ws, self.workers, self.preload, self.cache_size = ws, workers, preload, cache_size
        self.indexes: dict[tuple[str, str], LoadedIndex] = {}
        self.matchers: dict[str, Matcher] = {}
        self.actors: list | None = None
        self._embedder = None  # the re-rank's crop embedder, made on first use
        self._uris: dict[str, str] = {}

    def _rerank(self, q: Query, sel: Selection) -> None:
        """The canonical-scale re-rank of ``sel``'s first ``q.rerank`` hits (in place), then cut to ``q.top_k``."""
        uris = self._catalog_uris([h.image_id for h in sel.hits[:q.rerank]]) if q.rerank > 0 else {}
        query_uri = uris.get(q.image) or q.image
        if q.rerank > 0 and sel.hits and (os.path.exists(query_uri) or "://" in query_uri):
            from actors.core.images import load_image
            from actors.selection.rerank import crop_embedder, rerank_hits

            t = time.perf_counter()
            if self._embedder is None:
                from actors.core.runtime import device

                self._embedder = crop_embedder(device())
            head = sel.hits[:q.rerank]
            query_img = load_image(query_uri)
            qv = self._embedder.embed(query_img, q.boxes)
            nv = self._embedder.embed(query_img, q.negatives) if q.negatives else None
            sel.hits = rerank_hits(qv, head, lambda i: load_image(uris[i]), self._embedder, combine=q.combine,
                                   negative_vectors=nv) + sel.hits[q.rerank:]
            sel.reranked, sel.rerank_s = len(head), time.perf_counter() - t
        sel.hits = sel.hits[:q.top_k]

    def _catalog_uris(self, image_ids: Sequence[str]) -> dict[str, str]:
        """image_id -> uri from the catalog (read once per Selector; again when an id is new)."""
        if any(i not in self._uris for i in image_ids) and self.ws.exists(IMAGES):
            t = self.ws.read_table(IMAGES, columns=["image_id", "uri"])
            self._uris = dict(zip(t["image_id"].to_pylist(), t["uri"].to_pylist()))
        return self._uris

    def index(self, model: str, kind: str):
        """The loaded index of ``model``: the sharded region index (Ray shard actors) when the workspace has one
        (``assay index --shards N``), else the single memory-mapped index."""
        if (model, kind) not in self.indexes:
            from actors.selection.sharded_build import open_sharded, sharded_manifest

            if kind == "region" and sharded_manifest(self.ws, model) is not None:
                self.indexes[model, kind] = open_sharded(self.ws, model)
            else:
                self.indexes[model, kind] = load_index(self.ws, model, kind=kind)
        return self.indexes[model, kind]

    def close(self) -> None:
        """Stop the shard actors this selector started (single indexes need nothing)."""
        for key, index in list(self.indexes.items()):
            if hasattr(index, "close"):
                index.close()
                del self.indexes[key]

    def run(self, queries: Sequence[Query], *, n_candidates: int | None = None, scales: Sequence[float] = SCALES,
            write: bool = True) -> list[Selection]:
        """See :func:`mine_batch`."""
        for q in queries:
            _check_query(q)
        if self.workers > 0 and self.actors is None:
            self.actors = _start_actors(self.ws, queries, self.workers)
        pending, out, template = [], [], []
        for n, q in enumerate(queries):
            index = self.index(q.model, "region" if q.method == "template" else "global")
            t0 = time.perf_counter()
            fm, size = _query_features(self.ws, q)
            if q.method == "global":
                hits = _global_hits(self.ws, q, index, fm)
                out.append(Selection(query_id(q), _query_record(q), hits, coarse_s=time.perf_counter() - t0))
                continue
            objects = [box_template(fm.fmap, b, fm.stride_y, fm.stride_x, scales=scales, image_size=size,
                                    center=index.center) for b in q.boxes]
            n_cand = n_candidates or max(10 * q.top_k, 200)
            cands = coarse_candidates(index, [_coarse_vectors(t) for t in objects], n_cand)
            t1 = time.perf_counter()
            sel = Selection(query_id(q), _query_record(q), [], coarse_s=t1 - t0, n_candidates=len(cands))
            k = max(q.top_k, q.rerank)  # the re-rank may lift any of its window into the top_k
            if self.actors:
                actor = self.actors[n % len(self.actors)]
                pending.append((sel, t1, actor.rerank.remote(objects, cands, k, q.combine)))
            else:
                if q.model not in self.matchers:
                    self.matchers[q.model] = Matcher(self.ws, q.model, preload=self.preload,
                                                     cache_size=self.cache_size)
                m = self.matchers[q.model]
                sel.hits, sel.fine_s = m.rerank(objects, cands, k, q.combine), time.perf_counter() - t1
            out.append(sel)
            template.append((q, sel))
        if pending:
            import ray

            for (sel, t1, _), hits in zip(pending, ray.get([p[2] for p in pending])):
                sel.hits, sel.fine_s = hits, time.perf_counter() - t1
        for q, sel in template:
            self._rerank(q, sel)
        if write:
            for sel in out:
                self.ws.write_table(f"selections/{sel.query_id}.parquet", attach_uris(self.ws, sel.table()))
                self.ws.write_json(f"queries/{sel.query_id}.json", sel.query)
        return out


# ----------------------------------------------------------------------------------------------- coarse stage
def coarse_candidates(index, object_cells: Sequence[np.ndarray], n_candidates: int,
                      k_cell: int | None = None) -> list[str]:
    """Candidate images from a FAISS search of each object's query vectors (nq×C, in the index's form).

    ``index`` is a :class:`~actors.selection.index.LoadedIndex` or a
    :class:`~actors.selection.sharded.ShardedIndex` (anything with ``search_images`` and ``names``).
    For each query vector, the ``k_cell`` nearest index cells; per image, the best similarity per query vector
    (the vector's k-th similarity when the image is not among its hits); per object, the mean over its vectors;
    per image, the mean over objects. Returns the ``n_candidates`` best image ids, best first.
    """
    k_cell = k_cell or max(4 * n_candidates, 1024)
    per_object = []
    for cells in object_cells:
        D, codes = index.search_images(cells, k_cell)  # nq×k
        valid = codes >= 0
        floor = np.where(valid, D, np.inf).min(axis=1)  # nq, k-th similarity
        per_object.append((codes, D, valid, floor))
    uniq = np.unique(np.concatenate([c[v] for c, _, v, _ in per_object]))
    total = np.zeros(len(uniq))
    for codes, D, valid, floor in per_object:
        best = np.repeat(floor[:, None], len(uniq), axis=1)  # nq×U
        q_idx = np.broadcast_to(np.arange(len(codes))[:, None], codes.shape)[valid]
        np.maximum.at(best, (q_idx, np.searchsorted(uniq, codes[valid])), D[valid])
        total += best.mean(axis=0)
    order = np.argsort(-total, kind="stable")[:n_candidates]
    return index.names(uniq[order])


def _coarse_vectors(t: BoxTemplate) -> np.ndarray:
    """The coarse stage's query vectors of one object: its template vector (already centred, unit), 1×C."""
    return normalize(t.vector.detach().cpu().numpy()[None])


# ----------------------------------------------------------------------------------------------- global baseline
def _global_hits(ws: Workspace, q: Query, index: LoadedIndex, fm: FeatureMap) -> list[Hit]:
    xq = cell_vectors(fm, "global", index.center)[0]  # 1×C, centred like the index
    D, I = index.search(xq, q.top_k)
    ids = [index.image_names[index.image_codes[i]] for i in I[0] if i >= 0]
    sizes = _image_sizes(ws, q.model, ids)
    return [Hit(i, float(d), (0.0, 0.0, *sizes[i]), [(0.0, 0.0, *sizes[i])]) for i, d in zip(ids, D[0])]


def _image_sizes(ws: Workspace, model: str, image_ids: Sequence[str]) -> dict[str, tuple[float, float]]:
    """(width, height) per image: from the catalog when present, else the feature grid's extent."""
    out: dict[str, tuple[float, float]] = {}
    if ws.exists(IMAGES):
        t = ws.read_table(IMAGES, columns=["image_id", "width", "height"])
        wanted = set(image_ids)
        for r in t.to_pylist():
            if r["image_id"] in wanted:
                out[r["image_id"]] = (float(r["width"]), float(r["height"]))
    rest = [i for i in image_ids if i not in out]
    for fm in iter_feature_maps(ws, model, image_ids=rest) if rest else ():
        out[fm.image_id] = (fm.fmap.shape[2] * fm.stride_x, fm.fmap.shape[1] * fm.stride_y)
    return {i: out.get(i, (float("nan"), float("nan"))) for i in image_ids}


# ----------------------------------------------------------------------------------------------- query plumbing
def _check_query(q: Query) -> None:
    if q.method not in METHODS:
        raise UserError(f"method must be one of {METHODS}, got {q.method!r}")
    if q.combine not in COMBINE:
        raise UserError(f"combine must be one of {COMBINE}, got {q.combine!r}")
    if q.top_k < 1:
        raise UserError(f"top_k must be >= 1, got {q.top_k}")
    if q.method == "template" and not q.boxes:
        raise UserError("template matching needs at least one --box x0,y0,x1,y1")
    if q.fmap is None and not q.image:
        raise UserError("a query needs an image")
    if q.negatives and (q.rerank <= 0 or q.method != "template"):
        raise UserError("negative boxes are applied by the re-rank: use them with method template and rerank > 0")
    if q.rerank < 0:
        raise UserError(f"rerank must be >= 0, got {q.rerank}")


def _query_features(ws: Workspace, q: Query) -> tuple[FeatureMap, tuple[float, float] | None]:
    """The query's feature map and (width, height): given, stored (pool image_id), or encoded from the file."""
    if q.fmap is not None:
        return q.fmap, q.image_size
    stored = next(iter_feature_maps(ws, q.model, image_ids=[q.image]), None) if not os.path.exists(q.image) else None
    if stored is not None:
        return stored, q.image_size or _image_sizes(ws, q.model, [q.image])[q.image]
    path = Path(q.image)
    if not path.is_file():
        raise UserError(f"query image {q.image}: no such file (nor an embedded pool image id)")
    from actors.features.encoder import load_region_encoder
    from actors.core.images import load_image

    rgb = load_image(str(path))  # H×W×3 uint8
    fm = load_region_encoder(ws, q.model).encode(rgb, "query")
    return fm, q.image_size or (float(rgb.shape[1]), float(rgb.shape[0]))


def query_id(q: Query) -> str:
    """Stable hash of the query content: image bytes (or its name), boxes, model, method, combine."""
    h = hashlib.sha256()
    if q.image and os.path.isfile(q.image):
        h.update(Path(q.image).read_bytes())
    else:
        h.update(q.image.encode())
    spec = {"boxes": [[round(v, 2) for v in b] for b in q.boxes], "model": q.model, "method": q.method,
            "combine": q.combine, "rerank": q.rerank, "negatives": [[round(v, 2) for v in b] for b in q.negatives]}
    h.update(json.dumps(spec, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _query_record(q: Query) -> dict:
    uri = str(Path(q.image).resolve()) if q.image and os.path.exists(q.image) else q.image
    d = {k: v for k, v in asdict(q).items() if k != "fmap"}
    d.update(image=uri, boxes=[list(b) for b in q.boxes], negatives=[list(b) for b in q.negatives], k=q.top_k)
    d.pop("top_k")
    return d


def _start_actors(ws: Workspace, queries: Sequence[Query], workers: int) -> list:
    from actors.selection.actor import MatchActor
    from actors.core.runtime import Resources, init_ray

    models = {q.model for q in queries}
    if len(models) != 1:
        raise UserError(f"a batch with workers runs one model at a time, got {sorted(models)}")
    init_ray()
    res = Resources.auto(pool_size=workers)  # GPU asks shared (fractional) when workers outnumber the GPUs
    model = models.pop()  # once: popping per actor failed for workers >= 2
    return [MatchActor.options(num_cpus=res.num_cpus, num_gpus=res.num_gpus).remote(ws, model)
            for _ in range(workers)]


def load_queries(path: str) -> list[Query]:
    """Queries from a JSON file: a list of ``{"image": …, "boxes": [[x0,y0,x1,y1], …], "top_k"?, "method"?,
    "model"?, "combine"?, "rerank"?, "negatives"?, "name"?}`` (``name`` is ignored here: a label for the caller)."""
    try:
        items = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(items, list):
        raise UserError(f"{path}: expected a JSON list of queries")
    fields = {"image", "boxes", "top_k", "model", "method", "combine", "rerank", "negatives", "name"}
    out = []
    for n, it in enumerate(items):
        if not isinstance(it, dict) or "image" not in it or set(it) - fields:
            raise UserError(f"{path}: query {n} must be an object with keys among {sorted(fields)} incl. image")
        it = {k: v for k, v in it.items() if k != "name"}  # a label for the caller (a pipeline's query name)
        it = dict(it, boxes=[tuple(map(float, b)) for b in it.get("boxes", [])],
                  negatives=[tuple(map(float, b)) for b in it.get("negatives", [])])
        out.append(Query(**it))
    return out
