"""``liver-lrp`` command line (also ``python -m LiverTumorLRPLib``).

Each sub-command lives in its own module, which defines ``add_arguments(parser)``
and ``run(args) -> int`` (the exit code).  Modules are imported only when their
command runs, so ``liver-lrp --help`` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help)
COMMANDS = {
    "phantom": ("phantom", "generate synthetic six-sequence liver MRI cases with known ground truth"),
    "train": ("train", "train the 3D u-net on on-the-fly phantom cases"),
    "segment": ("commands", "segment liver tumors in a case"),
    "explain": ("commands", "LRP relevance of a region (Eq. 2), per sequence"),
    "analyze": ("commands", "sequence relevance of a case (the paper's Sec. 2.3)"),
    "cohort": ("cohort", "sequence relevance over every case under a folder, Fig. 1 and an HTML report"),
    "validate": ("validation", "faithfulness checks: known truth, randomisation, Shapley, AOPC; compares presets"),
    "demo": ("commands", "the main job on a generated phantom case: segment, analyse, pictures"),
    "web": ("web", "the browser page (trame-slicer): load, segment, explain, sequence relevance"),
}


def build_parser(commands=None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liver-lrp",
        description="Liver tumor segmentation in six-sequence MRI, explained by layer-wise relevance propagation.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if commands is None or name in commands:
            mod = importlib.import_module(f"LiverTumorLRPLib.{module}")
            getattr(mod, "add_arguments")(p, name) if _takes_name(mod) else mod.add_arguments(p)
    return parser


def _takes_name(mod) -> bool:
    import inspect

    return len(inspect.signature(mod.add_arguments).parameters) >= 2


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    wanted = [a for a in argv if a in COMMANDS][:1]
    parser = build_parser(commands=set(wanted))
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    mod = importlib.import_module(f"LiverTumorLRPLib.{args._module}")
    try:
        return int(mod.run(args) or 0)
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        print(f"liver-lrp {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
