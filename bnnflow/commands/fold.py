"""`bnnflow fold`: the fastest folding that fits the board, written as FINN's folding config."""

from __future__ import annotations

from pathlib import Path

from bnnflow.cli_args import add_budget_args, add_build_dir_arg, add_model_args
from bnnflow.outputs import OutCheck


def add_parsers(sub) -> None:
    p = sub.add_parser("fold", help="search the fastest folding that fits the board; write it as a folding config",
                       description="Builds the model up to specialize_layers (reusing the build folder when it "
                                   "holds this build), chooses PE/SIMD and memory styles for every layer to "
                                   "maximise the estimated FPS within the LUT/BRAM limits (FIFOs and width "
                                   "converters counted), sizes every FIFO with a cycle model of the stream graph "
                                   "(and prints the FPS it reaches beside FINN's estimate), prints the result and "
                                   "writes FINN's folding-config JSON for 'bnnflow build --folding FILE'.")
    add_model_args(p)
    add_budget_args(p)
    add_build_dir_arg(p)
    p.add_argument("--out", type=Path, help="folding config to write; default: BUILD/auto_folding.json")
    p.set_defaults(check_outputs=OutCheck("folding"))
    p.add_argument("--force", action="store_true", help="rebuild the build folder even if it holds this build")
    p.add_argument("--compare", action="store_true", help="also run FINN's target_fps heuristic (SetFolding) "
                                                          "and compare")


def cmd_fold(args) -> int:
    from rich.console import Console

    from bnnflow.atomic import write_json
    from bnnflow.build_flows import flow
    from bnnflow.build_flows.build import check_model, ensure_build, network_name
    from bnnflow.build_flows.build_folding import fold_build, specialised_model
    from bnnflow.build_flows.folding import compare_with_target_fps, print_comparison, print_fold
    from bnnflow.cli_args import model_words, request_from_args
    from bnnflow.hw.boards import get_board

    console = Console()
    req = request_from_args(args)
    check_model(req)
    board = get_board(args.board)
    board.budget(args.lut_max, args.bram_max)  # validates the limits before any build
    with console.status(f"Building {network_name(req)} up to {flow.SPECIALISED_STEP}..."):
        out_dir, reused, _ = ensure_build(req, flow.SPECIALISED_STEP, Console(quiet=True))
    console.print(f"{'Reusing' if reused else 'Built'} the specialised graph in {out_dir}.")
    name = network_name(req)
    with console.status("Searching the folding..."):
        result, path = fold_build(out_dir, board, args.out, args.lut_max, args.bram_max, name=name)
    print_fold(result, console)
    console.print(f"Wrote {path}: 'bnnflow build {model_words(args)} --folding {path}' "
                  "applies it (edit PE/SIMD there to tune by hand).")
    if args.compare:
        with console.status("Running FINN's target_fps heuristic for comparison..."):
            cmp = compare_with_target_fps(specialised_model(out_dir), board, args.lut_max, args.bram_max, name=name)
        write_json(out_dir / "fold_comparison.json", cmp)
        print_comparison(cmp, console)
    return 0


COMMANDS = {"fold": cmd_fold}
