"""Train DML-CSR (or FP-LIIF) with the whole schedule of a config; works under torchrun.

    dml-csr train CONFIG [section.key=value ...] [--resume] [--overwrite] [--output-dir DIR]
                  [--test]
    torchrun --nproc_per_node 4 -m dml_csr train helen       # multi-GPU (scripts/train.sh)

CONFIG is a name in configs/ (helen, lapa, celebamask_hq, synthetic) or a YAML path. The run
folder (the config's output_dir, or --output-dir) receives config.yaml, train.log, metrics.jsonl,
tb/, last.pth, best.pth and cycle{k}_aggregated.pth (docs/training.md); --test adds
metrics_test.json.
Under torchrun every process takes part in the test: each scores its share of the split.
"""
import argparse

from ..cli import add_debug_argument, add_trust_argument
from ..config import load_config
from .. import distributed as du
from ..engine.trainer import Trainer


def score_best(cfg, trainer: Trainer) -> None:
    """Score the run's best.pth on the test split; write metrics_test.json and print the table.

    Every process must call this: under torch.distributed each scores the strided shard
    ``rank::world_size`` of the split and the confusion histograms are all-reduced
    (``evaluate_model``), so the numbers equal a single-process run; only the main process
    writes and prints.
    """
    from ..eval.evaluate import write_result
    from ..eval.runner import run_test
    from ..eval.tables import format_result_table

    du.barrier()   # best.pth is written by the main process
    result = run_test(cfg, trainer.path("best.pth"), "test", device=trainer.device,
                      meta={"processes": du.get_world_size()})
    if not du.is_main():
        return
    out = trainer.path("metrics_test.json")
    write_result(result, out)
    print(format_result_table(result))
    h = result["headline"]
    print(f"test {h['name']} {h['value']:.2f} | mean F1 {result['mean_f1']:.2f} "
          f"| mIoU {result['miou']:.2f} -> {out}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="config name in configs/ or a YAML path")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides (YAML values)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pth")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run files already in OUTPUT_DIR (nothing else is deleted)")
    p.add_argument("--output-dir", help="run folder (default: the config's output_dir)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--test", action="store_true",
                   help="after training, score best.pth on the test split (metrics_test.json)")
    add_trust_argument(p)           # model.pretrained and --resume's last.pth
    add_debug_argument(p)
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        trainer = Trainer(cfg, output_dir=args.output_dir, resume=args.resume,
                          overwrite=args.overwrite, device=args.device,
                          trust_checkpoint=args.trust_checkpoint)
        trainer.fit()
        if args.test:
            score_best(cfg, trainer)
    finally:
        du.cleanup()
    return 0
