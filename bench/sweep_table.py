"""Mean ± std over seeds of a sweep's runs (run dirs <name>-s<seed>), as a Markdown table.

    python bench/sweep_table.py runs/sweep [runs/other-sweep ...] [--against sasrec-plain --against gru-plain ...]

Validation NDCG@10 (what choices are made on) comes first, then the test slices. With --against NAME, every
group whose name starts with NAME's prefix (`sasrec-`, `gru-`, `beauty-`, …: the same backbone and data)
gets a last column: its test NDCG@10 against NAME's, all / head / tail, each with the two-sided paired
bootstrap p-value of `ltrec compare` (per-user metrics averaged over the seeds, then paired over users),
and the `ltrec compare` command that reproduces it is printed below the table.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics as st
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ltrec.compare import compare, format_test  # noqa: E402
from ltrec.errors import UserError  # noqa: E402


def groups(roots: list[Path]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for d in sorted(d for root in roots for d in root.glob("*-s[0-9]*")):
        if d.is_dir() and (d / "metrics.json").exists():
            out.setdefault(re.sub(r"-s\d+$", "", d.name), []).append(d)
    return out


def ms(values: list[float]) -> str:
    return f"{st.mean(values):.4f} ± {st.stdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def spec(dirs: list[Path]) -> str:
    return ",".join(map(str, dirs))


def paired(base: list[Path], dirs: list[Path]) -> str:
    """NDCG@10 all / head / tail against the baseline, paired over users; '–' without per-user files."""
    try:
        result = compare([spec(base), spec(dirs)], metrics=("ndcg@10",), slices=("all", "head", "tail"))
    except UserError as exc:
        return f"– ({exc})" if "missing" not in str(exc) else "–"
    return " / ".join(format_test(row["tests"][0]) for row in result["rows"])


def row(name: str, dirs: list[Path], base: list[Path] | None) -> str:
    ms_ = [json.loads((d / "metrics.json").read_text()) for d in dirs]
    cells = [ms([m["valid"]["all"]["ndcg@10"] for m in ms_])]
    cells += [ms([m["test"][s][metric] for m in ms_]) for metric in ("ndcg@10", "hr@10") for s in ("all", "head", "tail")]
    cells.append(", ".join(f"{m['best_epoch']}/{m['epochs']}" for m in ms_))
    cells.append(f"{st.mean(m['seconds_per_epoch'] for m in ms_):.1f}")
    cells.append("" if base is None or base == dirs else paired(base, dirs))
    return f"| {name} | {len(dirs)} | " + " | ".join(cells) + " |"


def baseline_of(name: str, against: list[str], found: dict[str, list[Path]]) -> list[Path] | None:
    for base in against:
        if name == base or name.startswith(base.split("-")[0] + "-"):
            return found[base]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("roots", type=Path, nargs="+", help="sweep output folders (their run dirs are pooled)")
    ap.add_argument("--against", action="append", default=[],
                    help="a baseline group; the groups with its prefix are tested against it (repeatable)")
    args = ap.parse_args()
    found = groups(args.roots)
    if not found:
        raise SystemExit(f"no finished runs (<name>-s<seed>/metrics.json) under {', '.join(map(str, args.roots))}")
    for base in args.against:
        if base not in found:
            raise SystemExit(f"--against {base}: no such group; groups: {', '.join(found)}")
    print("| run | seeds | valid NDCG@10 | test NDCG@10 all | head | tail | test HR@10 all | head | tail "
          "| best/ran epochs | s/epoch | vs baseline, NDCG@10 all / head / tail (p) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, dirs in found.items():
        print(row(name, dirs, baseline_of(name, args.against, found)))
    if args.against:
        print()
        for name, dirs in found.items():
            base = baseline_of(name, args.against, found)
            if base is not None and base != dirs:
                print(f"ltrec compare {spec(base)} {spec(dirs)}")


if __name__ == "__main__":
    main()
