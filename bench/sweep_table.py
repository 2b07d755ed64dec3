"""Mean ± std over seeds of a sweep's runs (run dirs <name>-s<seed>), as a Markdown table.

    python bench/sweep_table.py runs/sweep [--against sasrec-plain]

Validation NDCG@10 (what choices are made on) comes first, then the test slices. With --against NAME, every
group with the same backbone prefix is also given the `ltrec compare` command that tests it against NAME
paired over users with the seeds averaged, which is where the p-values come from.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics as st
from pathlib import Path


def groups(root: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for d in sorted(root.glob("*-s[0-9]*")):
        if d.is_dir() and (d / "metrics.json").exists():
            out.setdefault(re.sub(r"-s\d+$", "", d.name), []).append(d)
    return out


def ms(values: list[float]) -> str:
    return f"{st.mean(values):.4f} ± {st.stdev(values):.4f}" if len(values) > 1 else f"{values[0]:.4f}"


def row(name: str, dirs: list[Path]) -> str:
    ms_ = [json.loads((d / "metrics.json").read_text()) for d in dirs]
    cells = [ms([m["valid"]["all"]["ndcg@10"] for m in ms_])]
    cells += [ms([m["test"][s]["ndcg@10"] for m in ms_]) for s in ("all", "head", "tail")]
    cells += [ms([m["test"][s]["hr@10"] for m in ms_]) for s in ("all", "tail")]
    best = ", ".join(f"{m['best_epoch']}/{m['epochs']}" for m in ms_)
    return f"| {name} | {len(dirs)} | " + " | ".join(cells) + f" | {best} | {st.mean(m['seconds_per_epoch'] for m in ms_):.1f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--against", help="the baseline group for the ltrec compare commands")
    args = ap.parse_args()
    found = groups(args.root)
    if not found:
        raise SystemExit(f"no finished runs (<name>-s<seed>/metrics.json) under {args.root}")
    print("| run | seeds | valid NDCG@10 | test NDCG@10 all | head | tail | test HR@10 all | tail "
          "| best/ran epochs | s/epoch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, dirs in found.items():
        print(row(name, dirs))
    if args.against:
        if args.against not in found:
            raise SystemExit(f"--against {args.against}: no such group; groups: {', '.join(found)}")
        base = ",".join(map(str, found[args.against]))
        prefix = args.against.split("-")[0]
        print()
        for name, dirs in found.items():
            if name != args.against and name.startswith(prefix + "-"):
                print(f"ltrec compare {base} {','.join(map(str, dirs))}")


if __name__ == "__main__":
    main()
