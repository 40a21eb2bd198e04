"""Disk: ten named sandboxes over one image, against the image plus their own changes."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.common import BASE, DISK_SANDBOXES, Section, du, fmt_ratio, fmt_size, fmt_time, md_table, ratio, run_checked
from bench.workspace import Bench, layer_dirs


def bench_disk(bench: Bench) -> Section:
    section = Section("Disk")
    sm = bench.main
    image = bench.image(BASE)
    record = Path(str(image["path"]))
    layers = layer_dirs(image)
    image_size = du([*layers, record])
    store_before = du([sm.store / "layers", sm.store / "sandboxes"])
    names = [f"bench-disk-{i}" for i in range(DISK_SANDBOXES)]
    create_times: list[float] = []
    exec_times: list[float] = []
    for name in names:
        create_times.append(sm.timed("create", BASE, "--name", name))
        exec_times.append(sm.timed("exec", name, "--", "sh", "-c",
                                   f"head -c 4096 /dev/urandom > /root/{name}.bin"))
    sandbox_dirs = [sm.store / "sandboxes" / name for name in names]
    files = [d / "upper" / "root" / f"{name}.bin" for d, name in zip(sandbox_dirs, names, strict=True)]
    missing = [str(f) for f in files if not f.is_file()]
    own = du(files) if not missing else None
    uppers = du([d / "upper" for d in sandbox_dirs])
    total = du([*layers, record, *sandbox_dirs])
    store_after = du([sm.store / "layers", sm.store / "sandboxes"])
    upper_listing = run_checked(["find", sandbox_dirs[0], "-mindepth", "1", "-printf", "%P %s\n"])
    sm.call("-q", "rm", *names)

    value = ratio(float(total), float(image_size + own)) if own is not None else None
    section.lines.append(f"Ten `sandboxmgr create {BASE} --name ...`, then in each `exec ... sh -c 'head -c 4096 "
                         "/dev/urandom > /root/NAME.bin'`. Sizes are `du -sxc -B1` (hard links once).")
    section.lines.append("")
    rows = [
        ["the image (its layers and record)", fmt_size(image_size)],
        ["the ten files written (their own changes)",
         fmt_size(own) if own is not None else f"n/a: not found in the upper dirs: {missing[0]}"],
        ["the ten upper dirs (files + copied-up directories)", fmt_size(uppers)],
        ["image + ten sandbox dirs, measured together", fmt_size(total)],
        ["overhead per sandbox beyond its file",
         fmt_size((total - image_size - (own or 0)) / DISK_SANDBOXES)],
        ["store's layers/ + sandboxes/, before → after", f"{fmt_size(store_before)} → {fmt_size(store_after)}"],
        ["`create` median / `exec` (write a file) median",
         f"{fmt_time(statistics.median(create_times))} / {fmt_time(statistics.median(exec_times))}"],
    ]
    section.lines += md_table(["what", "size"], rows)
    section.lines.append("")
    section.lines.append("What one sandbox holds (`find -printf '%P %s'`): "
                         + ", ".join(f"`{line}`" for line in upper_listing.strip().splitlines()))
    section.target("ten sandboxes ≤ 1.05x the image plus their own changes", fmt_ratio(value) if value is None
                   else f"{value:.4f}x", None if value is None else value <= 1.05)
    return section

