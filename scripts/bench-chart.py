#!/usr/bin/env python3
"""Plots the load benchmark's table (scripts/bench.sh output) as a bar chart and renders it to a
PNG with headless Chromium (installed by scripts/setup.sh).

    scripts/bench.sh > bench.txt && scripts/bench-chart.py bench.txt docs/bench.png
"""
import html
import math
import os
import re
import subprocess
import sys
import tempfile

ROW = re.compile(r"^\|\s*([^|]+?)\s*\|\s*([\d.]+)\s*\|\s*([\d.]+|-)\s*\|\s*([\d.]+|-)\s*\|")


def rows(text):
    out = []
    for line in text.splitlines():
        m = ROW.match(line)
        # The probe row counts calls, it is not a rate.
        if m and not m.group(1).startswith(("phase", "Authenticate probe")):
            name, rate, p50, p99 = m.groups()
            out.append((name, float(rate), p50, p99))
    return out


def svg(data, title):
    width, bar_h, gap, left = 980, 26, 8, 330
    top = 60
    height = top + len(data) * (bar_h + gap) + 40
    top_rate = max(r for _, r, _, _ in data)
    scale = lambda r: (math.log10(max(r, 1)) / math.log10(top_rate)) * (width - left - 170)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="DejaVu Sans, sans-serif" font-size="14">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="20" y="32" font-size="20" font-weight="bold">{html.escape(title)}</text>',
        f'<text x="20" y="52" fill="#555">calls per second, log scale; p50 / p99 in ms</text>',
    ]
    for i, (name, rate, p50, p99) in enumerate(data):
        y = top + i * (bar_h + gap)
        w = max(scale(rate), 2)
        colour = "#2b6cb0" if "Authenticate" in name or "Authorize" in name or "ext_authz" in name else "#718096"
        parts.append(f'<text x="{left - 10}" y="{y + 18}" text-anchor="end">{html.escape(name)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colour}"/>')
        label = f"{rate:,.0f}/s" + (f"  ({p50} / {p99})" if p50 != "-" else "")
        parts.append(f'<text x="{left + w + 8:.1f}" y="{y + 18}">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts), width, height


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    text = open(sys.argv[1]).read()
    data = rows(text)
    if not data:
        sys.exit("no benchmark table found")
    cores = re.search(r"(\d+) cores", text)
    title = "keyward load benchmark" + (f" ({cores.group(1)} cores, one machine)" if cores else "")
    image, width, height = svg(data, title)
    with tempfile.TemporaryDirectory() as tmp:
        page = os.path.join(tmp, "chart.html")
        with open(page, "w") as f:
            f.write(f"<!DOCTYPE html><html><body style='margin:0'>{image}</body></html>")
        out = os.path.abspath(sys.argv[2])
        subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={tmp}/profile", f"--window-size={width},{height}",
             f"--screenshot={out}", f"file://{page}"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
