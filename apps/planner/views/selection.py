"""Page: targeted selection — a query image and a box -> the pool images holding a similar object (``assay mine``)."""

from __future__ import annotations

import math
import os

import streamlit as st

from actors.core.errors import UserError
from apps.planner import selection_data as sd
from apps.planner.common import missing, run_page, workspace

PAGE_SIZE = 12
CANVAS_WIDTH = 640
SELECTED = "sel_query_id"
EXPORTS = [  # (button, format of `assay export`, MIME type)
    ("Export manifest (CSV)", "csv", "text/csv"),
    ("Export manifest (Parquet)", "parquet", "application/vnd.apache.parquet"),
    ("Export COCO JSON", "coco", "application/json"),
    ("Export for FiftyOne (zip)", "fiftyone", "application/zip"),
]
EXPORT_HELP = {"fiftyone": "Unzip, then fo.Dataset.from_dir(dataset_dir=DIR, "
                           "dataset_type=fo.types.FiftyOneImageDetectionDataset); image paths are this machine's."}


def _canvas():
    """``st_canvas`` when streamlit-drawable-canvas works in this runtime, else None (numeric inputs instead)."""
    if os.environ.get("ASSAY_PLANNER_NO_CANVAS"):
        return None
    try:
        from streamlit_drawable_canvas import st_canvas
    except Exception:  # noqa: BLE001  (missing, or incompatible with this Streamlit): fall back to numbers
        return None
    return st_canvas


def _pick_box(image, key: str) -> tuple[float, float, float, float]:
    """The query box in image pixels: drawn on the image (canvas) or typed (fallback)."""
    w, h = image.size
    canvas = _canvas()
    how = st.radio("Box", ["Draw on the image", "Type the coordinates"] if canvas else ["Type the coordinates"],
                   horizontal=True, key=f"sel_boxmode_{key}")
    if how == "Draw on the image":
        scale = min(1.0, CANVAS_WIDTH / w)
        res = canvas(fill_color="rgba(255, 40, 40, 0.15)", stroke_width=2, stroke_color="#ff2828",
                     background_image=image.resize((max(1, round(w * scale)), max(1, round(h * scale)))),
                     drawing_mode="rect", width=max(1, round(w * scale)), height=max(1, round(h * scale)),
                     key=f"sel_canvas_{key}")
        box = sd.box_from_canvas(res.json_data, scale)
        if box is None:
            st.caption("Drag a rectangle around the object.")
            return (math.nan,) * 4
        st.caption("Box (pixels): " + ", ".join(f"{v:.0f}" for v in box))
        return box
    st.image(image, caption=f"query image, {w}x{h} px", width=min(w, CANVAS_WIDTH))
    c = st.columns(4)
    dflt = (w / 4, h / 4, 3 * w / 4, 3 * h / 4)
    return tuple(float(c[i].number_input(lbl, value=float(round(dflt[i])), step=1.0, format="%.0f",
                                         key=f"sel_{lbl}_{key}"))
                 for i, lbl in enumerate(("x0", "y0", "x1", "y1")))  # type: ignore[return-value]


def _query(ws, model: str):
    """The query: (image for mining — a pool image id or an uploaded file to save —, PIL image, key)."""
    src = st.radio("Query image", ["Pool image", "Upload an image"], horizontal=True, key="sel_src")
    if src == "Upload an image":
        up = st.file_uploader("Query image (PNG or JPEG)", type=["png", "jpg", "jpeg", "bmp", "webp"],
                              key="sel_upload")
        if up is None:
            return None
        image, fmt = sd.decode_upload(up.getvalue())
        return ("upload", fmt), image, up.file_id
    cat = sd.catalog(ws)
    if cat.empty:
        st.info("The workspace has no catalog to pick a query from; upload an image instead.")
        return None
    indexed = sd.indexed_images(ws.uri, model, sd.index_stamp(ws, model))
    cat = cat[cat["image_id"].isin(indexed) | (cat["split"] == "queries")]
    if cat.empty:
        st.info("No catalog image is in the index; upload an image instead.")
        return None
    cat = cat.sort_values(["split", "image_id"], key=lambda s: s.ne("queries") if s.name == "split" else s)
    names = [sd.file_name(r.uri, r.image_id) for r in cat.itertuples()]
    twice = {n for n in names if names.count(n) > 1}  # the same file name in two folders: the id tells them apart
    labels = [f"{n}{f' · {r.image_id}' if n in twice else ''} ({r.split})" for n, r in zip(names, cat.itertuples())]
    i = labels.index(st.selectbox("Pool image", labels, key="sel_pool"))
    row = cat.iloc[i]
    from PIL import Image

    try:
        with Image.open(row["uri"]) as im:
            image = im.convert("RGB")
    except (OSError, ValueError) as e:
        raise UserError(f"catalog image {row['image_id']}: {row['uri']} is not readable ({type(e).__name__})") from e
    target = row["image_id"] if row["image_id"] in indexed else row["uri"]
    return ("pool", target), image, row["image_id"]


def _new_query(ws, models: list[str]) -> None:
    model = st.selectbox("Feature store", models, key="sel_model")
    q = _query(ws, model)
    if q is None:
        return
    (kind, ref), image, key = q
    box = _pick_box(image, str(key))
    c1, c2, c3 = st.columns(3)
    top_k = int(c1.number_input("How many images", 1, 1000, 24, 1, key="sel_topk"))
    method = c2.selectbox("Method", ["template", "global"], key="sel_method",
                          help="template: match the boxed object; global: whole-image baseline")
    workers = int(c3.number_input("Ray match actors (0: in this process)", 0, 16, 0, 1, key="sel_workers"))
    if not st.button("Run mining", type="primary", key="sel_run"):
        return
    box = sd.check_box(box, *image.size)  # before anything is written
    from actors.selection.mine import Query, mine_batch

    rel_written = None  # an uploaded image is kept only when its query succeeds (or it was already there)
    if kind == "upload":
        rel, existed = sd.upload_rel(image, ref)
        # what to delete if the query fails: the file, or the first folder on its path this upload created
        rel_written = None if existed(ws) else next(
            (d for d in ("queries", "queries/images") if not ws.exists(d)), rel)
        image_arg = sd.save_upload(ws, rel, image, ref)
    else:
        image_arg = ref
    try:
        with st.spinner("Mining…"):
            (sel,) = mine_batch(ws, [Query(image_arg, [box], top_k, model, method, "min",
                                           image_size=(float(image.width), float(image.height)))], workers=workers)
    except BaseException:
        if rel_written:
            ws.delete(rel_written)
        raise
    st.session_state[SELECTED] = sel.query_id
    st.success(f"{len(sel.hits)} images selected; saved as selections/{sel.query_id}.parquet")


def _gallery(ws, query_id: str) -> None:
    hits, query = sd.load_selection(ws, query_id)
    st.subheader(f"Selection {sd.selection_label(ws, query_id)}")
    if query:
        st.caption(f"query image {sd.query_image_name(ws, query)}, boxes {query.get('boxes')}, {query.get('method')} on "
                   f"{query.get('model')}, {len(hits)} hits")
    if hits.empty:
        st.info("This selection is empty.")
        return
    pages = max(1, math.ceil(len(hits) / PAGE_SIZE))
    page = int(st.number_input(f"Page (of {pages})", 1, pages, 1, 1, key=f"sel_page_{query_id}"))
    chunk = hits.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
    cols = st.columns(4)
    for j, r in enumerate(chunk.to_dict("records")):
        col = cols[j % 4]
        uri = r.get("uri")
        png = sd.thumbnail(uri, (r["x0"], r["y0"], r["x1"], r["y1"])) if isinstance(uri, str) else None
        cap = f"#{int(r['rank'])} · score {r['score']:.3f} · {sd.file_name(uri, r['image_id'])}"
        if png is None:
            col.caption(f"{cap} (image not readable)")
        else:
            col.image(png, caption=cap)
    _exports(ws, query_id)


def _exports(ws, query_id: str) -> None:
    """One download button per format of ``assay export``; a format that cannot be written says why instead."""
    for col, (label, fmt, mime) in zip(st.columns(len(EXPORTS)), EXPORTS):
        try:
            name, data = sd.export_file(ws, query_id, fmt)
        except UserError as e:
            col.caption(f"{label}: {e}")
            continue
        col.download_button(label, data, file_name=name, mime=mime, key=f"sel_{fmt}_{query_id}",
                            help=EXPORT_HELP.get(fmt))


def render() -> None:
    st.title("Targeted selection")
    st.caption("Box an object in a query image; the pool images holding a similar object come back ranked, with "
               "the matched region (same search as `assay mine`).")
    ws = workspace()
    models = sd.indexed_stores(ws)
    saved = sd.selection_ids(ws)
    if not models and not saved:
        have = sd.stores(ws)
        if not have:
            missing(f"No feature store in `{ws.uri}/features/`, so there is nothing to search.",
                    f"assay embed --workspace {ws.uri}\nassay index --workspace {ws.uri}")
        else:
            missing(f"Feature store(s) {', '.join(have)} have no index in `{ws.uri}/index/`.",
                    f"assay index --workspace {ws.uri} --model {have[0]}")
        return
    modes = (["Run a new query"] if models else []) + (["Open a saved selection"] if saved else [])
    mode = st.radio("Selection", modes, horizontal=True, key="sel_mode")
    if mode == "Run a new query":
        _new_query(ws, models)
        qid = st.session_state.get(SELECTED)
    else:
        if not models:
            st.caption(f"No index in `{ws.uri}/index/`: new queries need `assay index --workspace {ws.uri}`.")
        labels = {q: sd.selection_label(ws, q) for q in saved}
        qid = st.selectbox("Saved selection", saved, key="sel_saved", format_func=labels.get)
    if qid and ws.exists(f"selections/{qid}.parquet"):
        _gallery(ws, qid)


run_page(render)
