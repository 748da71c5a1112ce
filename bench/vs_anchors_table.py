"""Helper of bench/vs_anchors.sh: records each run's RESULT row in OUT/vs_anchors.jsonl and prints the table.

    python bench/vs_anchors_table.py record --jsonl F --run ID --config C --side reference|selfsup --round R \
        --batch B --rc RC --log LOG --cmd CMD [--note N]          # parse LOG's RESULT rows, append one row
    python bench/vs_anchors_table.py skip --jsonl F --run ID --config C --reason WHY
    python bench/vs_anchors_table.py aug --jsonl F --run ID --log LOG --rc RC --cmd CMD [--note N]
    python bench/vs_anchors_table.py table --jsonl F --run ID [--header TEXT]...

One JSON line per (configuration, side, round): status ok / failed / skipped, the parsed `result` (the script's
own RESULT row) and samples/s recomputed from the batch and the median step time (the scripts round samples/s to
0.1, too coarse for the CPU's tiny batches). Not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys


def parse_results(text: str) -> list[dict]:
    rows = []
    for line in text.splitlines():
        if line.startswith("RESULT "):
            try:
                rows.append(json.loads(line[len("RESULT "):]))
            except json.JSONDecodeError:
                pass
    return rows


def tail(text: str, n: int = 6) -> str:
    lines = [ln for ln in text.splitlines()
             if ln.strip() and not ln.startswith(("RESULT ", "{")) and "No pretrained weights" not in ln]
    return " | ".join(lines[-n:])[-600:]


def append(path: str, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def fmt(x: float | None) -> str:
    if x is None:
        return ""
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def cmd_record(a) -> None:
    text = open(a.log, errors="replace").read()
    rows = [r for r in parse_results(text) if "step_ms" in r or "error" in r]  # not bert's collator row
    base = dict(run=a.run, config=a.config, side=a.side, round=a.round, batch=a.batch, rc=a.rc, command=a.cmd,
                note=a.note)
    row = rows[-1] if rows else None
    if row is None or "error" in row or a.rc != 0:
        why = row.get("error") if row and "error" in row else (
            f"timed out (exit {a.rc})" if a.rc in (124, 137) else f"exit {a.rc}, no RESULT row" if row is None
            else f"exit {a.rc}")
        append(a.jsonl, {**base, "status": "failed", "error": f"{why}: {tail(text)}", "result": row})
        print(f"   {a.side:9s} round {a.round}: FAILED ({why})", file=sys.stderr)
        return
    batch = row.get("batch", a.batch)
    sps = batch * 1000.0 / row["step_ms"] if row.get("step_ms") else row.get("samples_per_s")
    append(a.jsonl, {**base, "status": "ok", "samples_per_s": sps, "gflop_per_step": row.get("gflop_per_step"),
                     "peak_alloc_gib": row.get("peak_alloc_gib"), "device": row.get("device"), "result": row})
    print(f"   {a.side:9s} round {a.round}: {fmt(sps)} samples/s, step {row.get('step_ms')} ms, "
          f"{row.get('gflop_per_step')} GFLOP/step" + (f", peak {row['peak_alloc_gib']} GiB"
                                                       if row.get("peak_alloc_gib") is not None else ""),
          file=sys.stderr)


def cmd_skip(a) -> None:
    append(a.jsonl, dict(run=a.run, config=a.config, side="both", status="skipped", reason=a.reason))
    print(f"   {a.reason}", file=sys.stderr)


def cmd_aug(a) -> None:
    """bench/augment.py's JSON lines (route, res, images_per_s, min, max) as rows; its rounds are inside it."""
    text = open(a.log, errors="replace").read()
    rows = []
    for line in text.splitlines():
        if line.startswith("{") and '"route"' in line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    if not rows:
        append(a.jsonl, dict(run=a.run, config="aug", side="aug", status="failed", rc=a.rc, command=a.cmd,
                             error=f"exit {a.rc}, no JSON rows: {tail(text)}"))
        print(f"   aug: FAILED (exit {a.rc})", file=sys.stderr)
        return
    for r in rows:
        append(a.jsonl, dict(run=a.run, config=f"aug {r['res']} px", side="aug", status="ok", rc=a.rc,
                             command=a.cmd, note=a.note, result=r))
        print(f"   aug {r['res']} px {r['route']}: {r['images_per_s']} images/s ({r['min']}-{r['max']})",
              file=sys.stderr)
    if a.rc != 0:  # e.g. timed out after the first size: keep the rows it printed, and say so
        why = f"timed out (exit {a.rc})" if a.rc in (124, 137) else f"exit {a.rc}"
        append(a.jsonl, dict(run=a.run, config="aug (rest)", side="aug", status="failed", rc=a.rc, command=a.cmd,
                             error=f"{why} after {len(rows)} rows: {tail(text)}"))
        print(f"   aug: FAILED ({why}) after {len(rows)} rows", file=sys.stderr)


def spread(xs: list[float]) -> str:
    if not xs:
        return ""
    med = statistics.median(xs)
    return fmt(med) + (f" ({fmt(min(xs))}–{fmt(max(xs))})" if len(xs) > 1 else "")


def ratio_spread(xs: list[float]) -> str:
    if not xs:
        return ""
    med = statistics.median(xs)
    return f"{med:.2f}" + (f" ({min(xs):.2f}–{max(xs):.2f})" if len(xs) > 1 else "")


def first(xs):
    xs = [x for x in xs if x is not None]
    return xs[0] if xs else None


def cmd_table(a) -> None:
    rows = []
    if not os.path.exists(a.jsonl):
        print(f"no {a.jsonl}: nothing was recorded")
        return
    with open(a.jsonl) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if r.get("run") == a.run:
                    rows.append(r)
    order: list[str] = []
    for r in rows:
        if r["config"] not in order:
            order.append(r["config"])
    out = []
    for h in a.header or []:
        out.append(h)
    out += ["", "| configuration | reference samples/s | selfsup samples/s | selfsup/reference | reference GFLOP/step "
            "| selfsup GFLOP/step | reference peak GiB | selfsup peak GiB | note |",
            "|---|---|---|---|---|---|---|---|---|"]
    for cfg in order:
        rs = [r for r in rows if r["config"] == cfg]
        if any(r["status"] == "skipped" for r in rs):
            reason = next(r["reason"] for r in rs if r["status"] == "skipped")
            out.append(f"| {cfg} | skipped | | | | | | | {reason} |")
            continue
        if all(r["side"] == "aug" for r in rs):
            out += aug_rows(cfg, rs)
            continue
        sides = {}
        for side in ("reference", "selfsup"):
            ok = [r for r in rs if r["side"] == side and r["status"] == "ok"]
            bad = [r for r in rs if r["side"] == side and r["status"] == "failed"]
            sides[side] = (ok, bad)
        by_round = {}
        for r in rs:
            if r["status"] == "ok":
                by_round.setdefault(r["round"], {})[r["side"]] = r["samples_per_s"]
        ratios = [v["selfsup"] / v["reference"] for v in by_round.values()
                  if "selfsup" in v and "reference" in v and v["reference"]]
        cells, notes = [], []
        for side in ("reference", "selfsup"):
            ok, bad = sides[side]
            cell = spread([r["samples_per_s"] for r in ok])
            if bad:
                cell = (cell + f" ({len(bad)} FAILED)") if cell else "FAILED"
                notes.append(f"{side} FAILED: {bad[0].get('error', '')[:200]}")
            cells.append(cell)
        ref_ok, ss_ok = sides["reference"][0], sides["selfsup"][0]
        gf = [first(r.get("gflop_per_step") for r in ref_ok), first(r.get("gflop_per_step") for r in ss_ok)]
        pk = [max((r["peak_alloc_gib"] for r in ok if r.get("peak_alloc_gib") is not None), default=None)
              for ok in (ref_ok, ss_ok)]
        note = first(r.get("note") for r in rs) or ""
        if gf[0] and gf[1]:
            d = 100 * (gf[1] / gf[0] - 1)
            note = (f"FLOPs {d:+.1f}%" + ("; " + note if note else "")) if abs(d) >= 0.5 else note
        if notes:
            note = "; ".join([note] + notes) if note else "; ".join(notes)
        out.append(f"| {cfg} | {cells[0]} | {cells[1]} | {ratio_spread(ratios)} | {fmt(gf[0]) if gf[0] else ''} | "
                   f"{fmt(gf[1]) if gf[1] else ''} | {pk[0] if pk[0] is not None else ''} | "
                   f"{pk[1] if pk[1] is not None else ''} | {note.replace('|', '/')} |")
    print("\n".join(out))


def aug_cell(r: dict) -> str:
    return fmt(r["images_per_s"]) + (f" ({fmt(r['min'])}–{fmt(r['max'])})" if r["min"] != r["max"] else "")


def aug_rows(cfg: str, rs: list[dict]) -> list[str]:
    failed = [r for r in rs if r["status"] == "failed"]
    if failed:
        return [f"| {cfg} | FAILED | FAILED | | | | | | {failed[0].get('error', '')[:300].replace('|', '/')} |"]
    by_route = {r["result"]["route"]: r["result"] for r in rs}
    res = next(iter(by_route.values()))
    label = f"{cfg}, batch {res.get('batch')}, images/s"
    kornia = by_route.get("kornia")
    v2 = by_route.get("v2_per_image")
    extra = first(r.get("note") for r in rs) or ""
    lines = []
    for route, r in by_route.items():
        if not route.startswith("selfsup"):
            continue
        ref = aug_cell(kornia) if kornia else ""
        mine = aug_cell(r)
        ratio = f"{r['images_per_s'] / kornia['images_per_s']:.2f}" if kornia and kornia["images_per_s"] else ""
        note = f"selfsup route {route} vs kornia AugmentationSequential; ratio of medians (rounds inside one process)"
        if v2:
            note += f"; torchvision v2 per image: {fmt(v2['images_per_s'])}"
        if extra:
            note += "; " + extra
        lines.append(f"| {label}: {route} | {ref} | {mine} | {ratio} | | | | | {note} |")
    return lines or [f"| {label} | | | | | | | | no selfsup route in bench/augment.py's output |"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    r = sub.add_parser("record")
    for k in ("jsonl", "run", "config", "side", "log", "cmd"):
        r.add_argument(f"--{k}", required=True)
    r.add_argument("--round", type=int, required=True)
    r.add_argument("--batch", type=int, required=True)
    r.add_argument("--rc", type=int, required=True)
    r.add_argument("--note", default="")
    s = sub.add_parser("skip")
    for k in ("jsonl", "run", "config", "reason"):
        s.add_argument(f"--{k}", required=True)
    g = sub.add_parser("aug")
    for k in ("jsonl", "run", "log", "cmd"):
        g.add_argument(f"--{k}", required=True)
    g.add_argument("--rc", type=int, required=True)
    g.add_argument("--note", default="")
    t = sub.add_parser("table")
    t.add_argument("--jsonl", required=True)
    t.add_argument("--run", required=True)
    t.add_argument("--header", action="append")
    a = p.parse_args()
    dict(record=cmd_record, skip=cmd_skip, aug=cmd_aug, table=cmd_table)[a.action](a)


if __name__ == "__main__":
    main()
