"""Published numbers as data: DML-CSR (CVPR 2022) Tables 1 to 6 and FP-LIIF (CVPR 2023).

Everything is in percent. Per-class F1 is keyed by the ``label_names.txt`` tokens of
``dml_csr.data.schemas`` (plus the scorer's merged names ``eyes``/``brows``/``mouth``/``overall``
and ``mean_f1`` for the mean F1), so a measured result's ``f1`` dict lines up key by key.

Rows are keyed by stable experiment keys; a result JSON names its row in ``meta.row``. One key is
one experiment, wherever the paper prints it (the paper repeats numbers across tables):

==================  ===============================================  ==============
key                 experiment                                       tables
==================  ===============================================  ==============
``baseline``        ResNet-101 + conv3x3/ABN context, parsing only  4, 5, 6
``psp``             + PSP context module                             5
``psp_pooling``     + PSP with its pooling removed                   5
``dgcnet``          + DGCNet context module                          5
``dgcnet_pooling``  + DGCNet with its pooling removed                5
``ddgcn``           + DDGCN context module (parsing only)            4 (+DDGCN), 5
``p+b``             DDGCN, parsing + binary edge                     6
``p+b+ba``          ... + binary edge attention                      6
``p+c``             DDGCN, parsing + category edge                   6
``p+c+ca``          ... + category edge attention                    6
``p+b+c``           parsing + binary + category edges                6
``dml``             all DML tasks, no CSR                            4 (+DML), 6 (all)
``dml-csr``         the full method (DML + CSR)                      1, 2, 3, 4 (+CSR)
``fp-liif``         FP-LIIF (Sarkar et al., CVPR 2023), published    2, 3
==================  ===============================================  ==============

``canonical_row`` also accepts the paper's labels (``+DDGCN``, ``+DML``, ``all``, ``+CSR``,
``PSP-pooling``, ``dml_csr``, ``fp_liif``, ...).

The row of a result is ``result_row(meta.row, meta.model)``: ``meta.row`` when set, else the row the
model family declares (``ParsingModel.row()``: ``dml_csr`` -> ``dml-csr``, ``fp_liif`` ->
``fp-liif``, a family of your own its own name); a result with neither, or of a family this process
does not know, is an error, never a default row.
"""
from typing import Dict, Optional, Tuple

__all__ = ["DATASETS", "DATASET_TITLES", "CLASS_TABLES", "PER_CLASS_F1", "TABLE4", "TABLE5",
           "TABLE6", "ABLATION_TABLES", "ROW_LABELS", "TABLE_ROW_LABELS",
           "canonical_row", "result_row", "table_for_dataset"]

# Column order of Tables 4 to 6.
DATASETS: Tuple[str, ...] = ("helen", "celebamask_hq", "lapa")
DATASET_TITLES = {"helen": "Helen", "celebamask_hq": "CelebAMask-HQ", "lapa": "LaPa"}

ROW_LABELS: Dict[str, str] = {
    "baseline": "Baseline",
    "psp": "+PSP",
    "psp_pooling": "+PSP-pooling",
    "dgcnet": "+DGCNet",
    "dgcnet_pooling": "+DGCNet-pooling",
    "ddgcn": "+DDGCN",
    "p+b": "p+b",
    "p+b+ba": "p+b+ba",
    "p+c": "p+c",
    "p+c+ca": "p+c+ca",
    "p+b+c": "p+b+c",
    "dml": "+DML (all)",
    "dml-csr": "DML-CSR",
    "fp-liif": "FP-LIIF",
}

_ALIASES = {
    "+ddgcn": "ddgcn", "+dml": "dml", "all": "dml", "+csr": "dml-csr", "csr": "dml-csr",
    "dml_csr": "dml-csr", "dmlcsr": "dml-csr", "fp_liif": "fp-liif", "fpliif": "fp-liif",
    "+psp": "psp", "psp-pooling": "psp_pooling", "+psp-pooling": "psp_pooling",
    "+dgcnet": "dgcnet", "dgcnet-pooling": "dgcnet_pooling", "+dgcnet-pooling": "dgcnet_pooling",
}



def canonical_row(row: str) -> str:
    """The stable key of a row name; unknown names come back stripped. No name is an error."""
    if row is None or not str(row).strip():
        raise ValueError(f"no row given ({row!r}); name one of {sorted(ROW_LABELS)} or any "
                         "other non-empty name")
    key = str(row).strip()
    low = key.lower()
    if low in ROW_LABELS:
        return low
    return _ALIASES.get(low, key)


def result_row(row: Optional[str], model: Optional[str]) -> str:
    """The row of a result: ``canonical_row(row)`` when ``row`` is set (not None or empty), else
    the row family ``model`` declares. Raises ``ValueError`` when neither says (never a default
    row)."""
    if row is not None and str(row).strip():
        return canonical_row(row)
    if model is None or not str(model).strip():
        raise ValueError("no meta.row and no meta.model, so no table row; set meta.row (e.g. "
                         "tools/evaluate.py / tools/test.py --meta row=dml-csr)")
    from ..models.registry import FAMILIES       # the row is the family's own fact
    if model not in FAMILIES:
        raise ValueError(f"no meta.row and an unknown model {model!r} (known families: "
                         f"{sorted(FAMILIES)}); set meta.row")
    return canonical_row(FAMILIES[model].row())


# Tables 1 to 3: (data set, title, columns). A column is (key, label): key is a token, a merged
# name, or "mean_f1"; the order and labels are the paper's.
CLASS_TABLES: Dict[int, Tuple[str, str, Tuple[Tuple[str, str], ...]]] = {
    1: ("helen", "Table 1: Helen, F1 (%)", (
        ("face", "skin"), ("nose", "nose"), ("ulip", "u-lip"), ("imouth", "i-mouth"),
        ("llip", "l-lip"), ("eyes", "eyes"), ("brows", "brows"), ("mouth", "mouth"),
        ("overall", "overall"))),
    2: ("lapa", "Table 2: LaPa, F1 (%)", (
        ("face", "skin"), ("hair", "hair"), ("le", "l-eye"), ("re", "r-eye"), ("ulip", "u-lip"),
        ("imouth", "i-mouth"), ("llip", "l-lip"), ("nose", "nose"), ("lb", "l-brow"),
        ("rb", "r-brow"), ("mean_f1", "mean"))),
    3: ("celebamask_hq", "Table 3: CelebAMask-HQ, F1 (%)", (
        ("skin", "face"), ("nose", "nose"), ("eye_g", "glasses"), ("l_eye", "l-eye"),
        ("r_eye", "r-eye"), ("l_brow", "l-brow"), ("r_brow", "r-brow"), ("l_ear", "l-ear"),
        ("r_ear", "r-ear"), ("mouth", "i-mouth"), ("u_lip", "u-lip"), ("l_lip", "l-lip"),
        ("hair", "hair"), ("hat", "hat"), ("ear_r", "earring"), ("neck_l", "necklace"),
        ("neck", "neck"), ("cloth", "cloth"), ("mean_f1", "mean"))),
}


def _row(keys, values) -> Dict[str, float]:
    assert len(keys) == len(values)
    return dict(zip(keys, values))


def _keys(table: int):
    return [k for k, _ in CLASS_TABLES[table][2]]


# PER_CLASS_F1[dataset][row][key]: DML-CSR Tables 1-3; FP-LIIF as copied by SegFace's Table 1
# (CelebAMask-HQ at 512; its mean F1 excludes background).
PER_CLASS_F1: Dict[str, Dict[str, Dict[str, float]]] = {
    "helen": {
        "dml-csr": _row(_keys(1), (96.6, 95.5, 87.6, 91.2, 91.2, 90.9, 88.5, 95.9, 93.8)),
    },
    "lapa": {
        "dml-csr": _row(_keys(2), (97.6, 96.4, 91.8, 91.5, 88.0, 90.5, 89.9, 97.3, 90.4, 90.4,
                                   92.4)),
        # fp_liif.md lists: skin, hair, nose, l-eye, r-eye, l-brow, r-brow, lower lip,
        # inner mouth, upper lip; re-ordered here into Table 2's columns.
        "fp-liif": _row(_keys(2), (97.5, 95.9, 92.0, 92.2, 87.7, 90.3, 89.5, 97.2, 90.9, 90.6,
                                   92.38)),
    },
    "celebamask_hq": {
        "dml-csr": _row(_keys(3), (95.7, 93.9, 92.6, 89.4, 89.6, 85.5, 85.7, 88.3, 88.2, 91.8,
                                   87.4, 91.0, 94.5, 88.5, 71.4, 40.6, 89.6, 85.7, 86.1)),
        "fp-liif": _row(_keys(3), (96.6, 94.0, 92.5, 90.0, 90.1, 85.6, 85.4, 86.8, 86.7, 92.7,
                                   89.4, 91.3, 95.2, 86.7, 67.2, 42.2, 91.4, 86.8, 86.14)),
    },
}

# Table 4 (ablation of the components): TABLE4[row][dataset] = {"miou", "f1"}; F1 is the headline
# (Helen overall F1, the others mean F1).
_T4 = {
    "baseline": ((82.36, 92.11), (76.14, 84.34), (83.16, 89.84)),
    "ddgcn": ((83.42, 92.56), (77.41, 85.33), (86.65, 92.10)),
    "dml": ((85.48, 93.75), (77.69, 85.98), (87.00, 92.32)),
    "dml-csr": ((85.58, 93.78), (77.81, 86.07), (87.13, 92.38)),
}
TABLE4: Dict[str, Dict[str, Dict[str, float]]] = {
    row: {ds: {"miou": m, "f1": f} for ds, (m, f) in zip(DATASETS, vals)}
    for row, vals in _T4.items()
}

# Table 5 (context modules) and Table 6 (tasks): TABLE[row][dataset] = headline F1.
TABLE5: Dict[str, Dict[str, float]] = {
    row: dict(zip(DATASETS, vals)) for row, vals in {
        "baseline": (92.11, 84.34, 89.84),
        "psp": (92.20, 84.76, 90.80),
        "psp_pooling": (92.37, 84.83, 91.35),
        "dgcnet": (92.41, 85.17, 91.72),
        "dgcnet_pooling": (92.45, 85.20, 91.99),
        "ddgcn": (92.56, 85.33, 92.10),
    }.items()
}
TABLE6: Dict[str, Dict[str, float]] = {
    row: dict(zip(DATASETS, vals)) for row, vals in {
        "baseline": (92.11, 84.34, 89.84),
        "p+b": (93.35, 85.58, 92.16),
        "p+b+ba": (93.52, 85.69, 92.24),
        "p+c": (93.61, 85.73, 92.21),
        "p+c+ca": (93.71, 85.87, 92.28),
        "p+b+c": (93.65, 85.80, 92.26),
        "dml": (93.75, 85.98, 92.32),
    }.items()
}

# Labels of a row inside one table, where the paper names it differently.
TABLE_ROW_LABELS: Dict[int, Dict[str, str]] = {
    4: {"dml": "+DML", "dml-csr": "+CSR (DML-CSR)"},
    6: {"dml": "all (+DML)"},
}

ABLATION_TABLES = {4: ("Table 4: ablation of the components, mIoU / F1 (%)", TABLE4),
                   5: ("Table 5: context modules, F1 (%)", TABLE5),
                   6: ("Table 6: tasks of DML, F1 (%)", TABLE6)}


def table_for_dataset(dataset: str) -> Optional[int]:
    """The per-class table (1, 2 or 3) of a data set, or None (synthetic and other sets)."""
    for number, (ds, _, _) in CLASS_TABLES.items():
        if ds == dataset:
            return number
    return None
