"""LaPa: ``LaPa/{train,val,test}/{images,labels}`` with labels that already hold ids."""
from pathlib import Path

from ..schemas import get_schema
from .common import (EXPECTED_COUNTS, PathLike, Plan, PrepareReport, check_link, find_root,
                     pair_folders)
from .publish import CopyIdMap, check_out_dir, run_plan

__all__ = ["prepare_lapa"]


def _plan_lapa(raw_dir: Path) -> Plan:
    root = find_root(raw_dir, "LaPa", "train")
    plan: Plan = {}
    for split, folder in (("train", "train"), ("valid", "val"), ("test", "test")):
        plan[split] = pair_folders(root / folder / "images", root / folder / "labels")
    return plan


def prepare_lapa(raw_dir: PathLike, out_dir: PathLike, *, link: str = "copy", workers: int = 0,
                 progress: bool = True) -> PrepareReport:
    """Prepare LaPa: ``raw_dir`` is ``LaPa/`` (or its parent) holding
    ``{train,val,test}/{images/*.jpg,labels/*.png}``; ``val`` becomes ``valid``.

    Labels already hold ids 0..10 in the Helen/LaPa order; each is checked (single channel, ids in
    range, same size as its image) and copied or linked (``link``: copy, hardlink, symlink).
    """
    raw, out = Path(raw_dir), Path(out_dir)
    check_link(link)
    check_out_dir(raw, out)
    schema = get_schema("lapa")
    plan = _plan_lapa(raw)
    return run_plan(schema, raw, out, plan, CopyIdMap(schema.num_classes, link), workers,
                    progress, EXPECTED_COUNTS["lapa"],
                    facts={"source": "lapa", "options": {"link": link}})
