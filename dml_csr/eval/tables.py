"""Measured results laid out as the paper's Tables 1 to 6, beside the published numbers.

Rules (also in docs/evaluation.md):

- A result (the JSON of ``dml_csr.eval.evaluate.build_result``) belongs to data set
  ``meta.dataset`` and row ``result_row(meta.row, meta.model)``: ``canonical_row(meta.row)``, or
  without ``meta.row`` the row of the model family (``dml_csr`` -> ``dml-csr``, ``fp_liif`` ->
  ``fp-liif``). A result with neither is an error naming its source, as are two results with the
  same (data set, row).
- Tables 1 to 3 (per-class F1 of Helen, LaPa, CelebAMask-HQ): one line per paper column (class,
  merged name, overall / mean), and for each method an ``ours | paper | delta`` triple of columns.
  Methods shown: the published rows of that data set (``dml-csr``; ``fp-liif`` for LaPa and
  CelebAMask-HQ) and any result row that is none of the ablation keys of Tables 4 to 6 (so an
  FP-LIIF result on Helen gets FP-LIIF columns without paper numbers).
- Tables 4 to 6: one line per paper row, and per data set (Helen, CelebAMask-HQ, LaPa) an
  ``ours | paper | delta`` triple for each metric (mIoU and F1 in Table 4, F1 in 5 and 6). F1 is
  the data set's headline: Helen overall F1, the others mean F1.
- Anything without a result is ``-``; an F1 that is undefined (class absent from gt and
  prediction) is ``n/a``; delta = ours - paper.
- Results of data sets without a paper table (synthetic) get their per-class table when all
  tables are asked for.
"""
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from .metrics import default_headline
from .paper import (ABLATION_TABLES, CLASS_TABLES, DATASET_TITLES, DATASETS, PER_CLASS_F1,
                    ROW_LABELS, TABLE_ROW_LABELS, result_row, table_for_dataset)

__all__ = ["Table", "index_results", "class_table", "ablation_table", "make_tables",
           "format_result_table", "format_class_table", "headline_value", "TABLE_NUMBERS"]

TABLE_NUMBERS = (1, 2, 3, 4, 5, 6)
MISSING = "-"  # no result for this cell
_NO_RESULT = object()
UNDEFINED = "n/a"
DELTA = "Δ"
_ABLATION_ROWS = {row for _, rows in ABLATION_TABLES.values() for row in rows}


@dataclass
class Table:
    title: str
    header: List[str]
    rows: List[List[str]]
    notes: List[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join([":---"] + ["---:"] * (len(self.header) - 1)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines)

    def to_latex(self) -> str:
        lines = [f"% {self.title}", "\\begin{tabular}{l" + "r" * (len(self.header) - 1) + "}",
                 "\\toprule", " & ".join(_tex(h) for h in self.header) + " \\\\", "\\midrule"]
        lines += [" & ".join(_tex(c) for c in row) + " \\\\" for row in self.rows]
        lines += ["\\bottomrule", "\\end{tabular}"]
        lines += [f"% {note}" for note in self.notes]
        return "\n".join(lines)

    def render(self, latex: bool = False) -> str:
        return self.to_latex() if latex else self.to_markdown()


def _tex(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"),
                 ("#", "\\#"), (DELTA, "$\\Delta$")):
        text = text.replace(a, b)
    return text


def _ours(value) -> str:
    return UNDEFINED if value is None else f"{value:.2f}"


def _triple(ours, paper, paper_fmt: str) -> List[str]:
    """[ours, paper, delta] cells; ``ours`` is _NO_RESULT, None (undefined F1) or a number."""
    ours_cell = MISSING if ours is _NO_RESULT else _ours(ours)
    paper_cell = MISSING if paper is None else format(paper, paper_fmt)
    if ours is _NO_RESULT or ours is None or paper is None:
        delta = MISSING
    else:
        delta = f"{ours - paper:+.2f}"
    return [ours_cell, paper_cell, delta]


def headline_value(result: dict, dataset: Optional[str] = None) -> Optional[float]:
    """The data set's headline F1 (Helen overall, else mean F1), whatever ``headline`` says."""
    dataset = dataset or result["meta"]["dataset"]
    if default_headline(dataset) == "overall_f1":
        return result["f1"].get("overall")
    return result["mean_f1"]


def _class_value(result: dict, key: str):
    if key == "mean_f1":
        return result["mean_f1"]
    return result["f1"].get(key, _NO_RESULT)


Indexed = Dict[Tuple[str, str], Tuple[str, dict]]


def index_results(results: Sequence[dict], sources: Optional[Sequence[str]] = None) -> Indexed:
    """{(dataset, row): (source, result)}; the row is ``result_row(meta.row, meta.model)``. A
    result without a row (no meta.row, no known meta.model) or a duplicate (dataset, row) raises
    naming the source(s)."""
    sources = list(sources) if sources is not None else [f"result #{i}" for i in
                                                         range(len(results))]
    indexed: Indexed = {}
    for source, result in zip(sources, results):
        meta = result.get("meta", {})
        if "dataset" not in meta:
            raise ValueError(f"{source}: no meta.dataset")
        try:
            key = (meta["dataset"], result_row(meta.get("row"), meta.get("model")))
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
        if key in indexed:
            raise ValueError(f"{indexed[key][0]} and {source} are both data set {key[0]!r}, row "
                             f"{key[1]!r}; give them distinct meta.row values")
        indexed[key] = (source, result)
    return indexed


def class_table(number: int, indexed: Indexed) -> Table:
    """Table 1, 2 or 3: per-class F1, ours beside the paper's, for each method."""
    dataset, title, columns = CLASS_TABLES[number]
    published = PER_CLASS_F1[dataset]
    extra = sorted(row for ds, row in indexed if ds == dataset and row not in published
                   and row not in _ABLATION_ROWS)
    methods = list(published) + extra
    header = ["class"]
    for row in methods:
        label = ROW_LABELS.get(row, row)
        header += [f"{label} ours", f"{label} paper", DELTA]
    lines = []
    for key, label in columns:
        line = [label]
        for row in methods:
            result = indexed.get((dataset, row))
            ours = _NO_RESULT if result is None else _class_value(result[1], key)
            line += _triple(ours, published.get(row, {}).get(key), "")
        lines.append(line)
    notes = [f"{ROW_LABELS.get(r, r)}: {indexed[(dataset, r)][0]}" for r in methods
             if (dataset, r) in indexed]
    return Table(title, header, lines, notes)


def ablation_table(number: int, indexed: Indexed) -> Table:
    """Table 4, 5 or 6: one line per paper row, ours | paper | delta per data set and metric.

    Results of data sets the paper does not report (the synthetic sets) get measured-only columns
    after the paper's, so a CPU run of the table is printed beside the published numbers."""
    title, paper_rows = ABLATION_TABLES[number]
    metrics = ("miou", "f1") if number == 4 else ("f1",)
    extra = sorted({ds for ds, row in indexed if ds not in DATASETS and row in paper_rows})
    header = ["row"]
    for ds in DATASETS:
        for metric in metrics:
            header += [f"{DATASET_TITLES[ds]} {'mIoU' if metric == 'miou' else 'F1'}", "paper",
                       DELTA]
    for ds in extra:
        header += [f"{ds} {'mIoU' if metric == 'miou' else 'F1'} (measured)" for metric in metrics]
    labels = {**ROW_LABELS, **TABLE_ROW_LABELS.get(number, {})}

    def ours(ds, row, metric):
        result = indexed.get((ds, row))
        if result is None:
            return _NO_RESULT
        return result[1]["miou"] if metric == "miou" else headline_value(result[1], ds)

    lines = []
    for row, paper in paper_rows.items():
        line = [labels[row]]
        for ds in DATASETS:
            for metric in metrics:
                published = paper[ds][metric] if number == 4 else paper[ds]
                line += _triple(ours(ds, row, metric), published, ".2f")
        for ds in extra:
            line += [_triple(ours(ds, row, metric), None, ".2f")[0] for metric in metrics]
        lines.append(line)
    notes = [f"{labels[row]} / {DATASET_TITLES.get(ds, ds)}: {indexed[(ds, row)][0]}"
             for row in paper_rows for ds in list(DATASETS) + extra if (ds, row) in indexed]
    return Table(title, header, lines, notes)


def _as_numbers(tables: Union[str, int, Iterable[int]]) -> List[int]:
    if tables == "all":
        return list(TABLE_NUMBERS)
    numbers = [int(tables)] if isinstance(tables, (int, str)) else [int(t) for t in tables]
    bad = [n for n in numbers if n not in TABLE_NUMBERS]
    if bad:
        raise ValueError(f"no table {bad}; the paper has tables {TABLE_NUMBERS}")
    return numbers


def make_tables(results: Sequence[dict], sources: Optional[Sequence[str]] = None,
                tables: Union[str, int, Iterable[int]] = "all", latex: bool = False) -> str:
    """The requested paper tables (markdown, or LaTeX tabulars) filled with ``results``."""
    indexed = index_results(results, sources)
    numbers = _as_numbers(tables)
    parts = [(class_table(n, indexed) if n in CLASS_TABLES else ablation_table(n, indexed))
             .render(latex) for n in numbers]
    if tables == "all":
        for (dataset, row), (source, result) in sorted(indexed.items()):
            if table_for_dataset(dataset) is None:
                parts.append(format_class_table(result, latex=latex,
                                                title=f"{dataset}, row {row} ({source})"))
    return "\n\n".join(parts) + "\n"


def format_result_table(metrics: dict, dataset: Optional[str] = None, row: Optional[str] = None,
                        latex: bool = False) -> str:
    """One result in its data set's paper layout (Table 1 Helen, 2 LaPa, 3 CelebAMask-HQ).

    The result's row is ``row``, else ``result_row(meta.row, meta.model)``; a result with neither
    is shown as plain "ours". It is compared with that row's published numbers when the paper has
    them for this data set, else with DML-CSR's (named in the header). Data sets without a paper
    table (synthetic) get ``format_class_table``.
    """
    meta = metrics.get("meta", {})
    dataset = dataset or meta.get("dataset")
    number = table_for_dataset(dataset)
    if number is None:
        return format_class_table(metrics, latex=latex)
    _, title, columns = CLASS_TABLES[number]
    try:
        row = result_row(row or meta.get("row"), meta.get("model"))
    except ValueError:
        row = None  # one result printed on its own: nothing to file, so no row is needed
    published_row = row if row in PER_CLASS_F1[dataset] else "dml-csr"
    published = PER_CLASS_F1[dataset][published_row]
    lines = [[label] + _triple(_class_value(metrics, key), published.get(key), "")
             for key, label in columns]
    ours = "ours" if row is None else f"ours ({ROW_LABELS.get(row, row)})"
    header = ["class", ours, f"paper ({ROW_LABELS[published_row]})", DELTA]
    notes = [f"mIoU {_ours(metrics['miou'])}, pixel accuracy {_ours(metrics['pixel_accuracy'])}, "
             f"mean accuracy {_ours(metrics['mean_accuracy'])}"]
    return Table(title, header, lines, notes).render(latex)


def format_class_table(metrics: dict, latex: bool = False, title: Optional[str] = None) -> str:
    """Every class's F1 and IoU, the merged names, then the summary numbers; no paper numbers."""
    meta = metrics.get("meta", {})
    if title is None:
        title = ", ".join(f"{k} {meta[k]}" for k in ("dataset", "split", "num_images") if k in meta)
        title = f"Per-class scores ({title or 'no meta'})"
    classes = metrics["classes"]
    lines = [[f"{i} {token}", _ours(metrics["f1"][token]), _ours(metrics["iou"][token])]
             for i, token in enumerate(classes)]
    lines += [[name, _ours(value), MISSING] for name, value in metrics["f1"].items()
              if name not in classes]
    headline = metrics["headline"]
    notes = [f"mean F1 {_ours(metrics['mean_f1'])}, mIoU {_ours(metrics['miou'])}, "
             f"pixel accuracy {_ours(metrics['pixel_accuracy'])}, "
             f"mean accuracy {_ours(metrics['mean_accuracy'])}; "
             f"headline {headline['name']} = {_ours(headline['value'])}"]
    if metrics.get("absent"):
        notes.append("absent from gt and prediction (F1 n/a, not in mean F1): "
                     + ", ".join(metrics["absent"]))
    return Table(title, ["class", "F1", "IoU"], lines, notes).render(latex)
