#!/usr/bin/python3
"""Parsing and the table for bench/run (Debian's python3, standard library only).

    table.py iperf FILE       receiver's Gbit/s of an `iperf3 -J` run
                              (UDP: "Gbit/s loss%"), or "n/a (reason)"
    table.py bytes FILE       the bytes the receiver counted in that run, or
                              "n/a (reason)"
    table.py ping FILE        "avg mdev" (ms) from `ping -q` output, or "n/a (reason)"
    table.py table DIR        the result table of the rows under DIR

A row is a directory DIR/NN-id with one small text file per measurement, as
bench/run writes them: `name`, `status` ("ok" or "n/a (reason)"), `up` and
`down` (one Gbit/s figure or "n/a (reason)" per repetition), `udp`, `p4`,
`ping`, `setup` ("ready_ms first_reply_ms"), `rss` ("idle_kib load_kib"),
`cpu_up`/`cpu_down` (engine CPU seconds per run), `bytes_up`/`bytes_down`
(what iperf3 moved in each of those runs, line for line), `note`.
"""

import json
import re
import statistics
import sys
from pathlib import Path


def na(reason):
    return f"n/a ({reason})"


def parse_iperf(path):
    try:
        text = Path(path).read_text()
    except OSError as e:
        return na(f"no output: {e.strerror}")
    try:
        data = json.loads(text)
    except ValueError:
        first = text.strip().splitlines()[:1]
        return na(f"iperf3: {first[0][:60]}" if first else "iperf3 printed nothing")
    if data.get("error"):
        return na(f"iperf3: {data['error'][:60]}")
    end = data.get("end", {})
    recv = end.get("sum_received")
    udp = data.get("start", {}).get("test_start", {}).get("protocol") == "UDP"
    if udp:
        if recv is None:
            s = end.get("sum", {})
            loss = s.get("lost_percent", 0.0)
            bps = s.get("bits_per_second", 0.0) * (1 - loss / 100)
        else:
            loss = recv.get("lost_percent", 0.0)
            bps = recv.get("bits_per_second", 0.0)
        return f"{bps / 1e9:.3f} {loss:.2f}"
    if recv is None:
        return na("iperf3 JSON without sum_received")
    return f"{recv['bits_per_second'] / 1e9:.3f}"


def parse_bytes(path):
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return na("no iperf3 JSON")
    if not isinstance(data, dict) or data.get("error"):
        return na("iperf3 failed")
    end = data.get("end", {})
    recv = end.get("sum_received") or end.get("sum") or {}
    moved = recv.get("bytes")
    if not isinstance(moved, (int, float)) or moved <= 0:
        return na("iperf3 JSON without received bytes")
    return str(int(moved))


def parse_ping(path):
    try:
        text = Path(path).read_text()
    except OSError as e:
        return na(f"no output: {e.strerror}")
    m = re.search(r"= [\d.]+/([\d.]+)/[\d.]+/([\d.]+) ms", text)
    if not m:
        loss = re.search(r"(\d+(?:\.\d+)?)% packet loss", text)
        return na(f"{loss.group(1)}% loss" if loss else "no reply")
    return f"{m.group(1)} {m.group(2)}"


def read(row, name):
    try:
        return (row / name).read_text().strip()
    except OSError:
        return ""


def numbers(lines):
    """Floats of the lines that are numbers, and the first n/a reason."""
    vals, reason = [], ""
    for line in lines.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            vals.append(float(line.split()[0]))
        except ValueError:
            reason = reason or line
    return vals, reason


def median_range(text, unit_fmt="{:.2f}"):
    vals, reason = numbers(text)
    if not vals:
        return reason or "n/a (not measured)"
    med = unit_fmt.format(statistics.median(vals))
    if len(vals) == 1:
        out = med
    else:
        out = f"{med} ({unit_fmt.format(min(vals))}–{unit_fmt.format(max(vals))})"
    if reason:
        out += f" +{reason}"
    return out


def cell_udp(text):
    if not text:
        return "n/a (not measured)"
    parts = text.split()
    try:
        return f"{float(parts[0]):.2f}, {float(parts[1]):.1f}% loss"
    except (ValueError, IndexError):
        return text


def cell_ping(text):
    if not text:
        return "n/a (not measured)"
    parts = text.split()
    try:
        return f"{float(parts[0]):.3f} ± {float(parts[1]):.3f}"
    except (ValueError, IndexError):
        return text


def cell_setup(text):
    if not text:
        return "n/a (not measured)"
    parts = text.split()
    if len(parts) == 2 and parts[1].isdigit() and (parts[0].isdigit() or parts[0] == "-"):
        return f"{parts[0].replace('-', '–')} / {parts[1]}"
    return text


def cell_rss(text):
    if not text:
        return "n/a (not measured)"
    parts = text.split()
    try:
        return f"{int(parts[0]) / 1024:.1f} / {int(parts[1]) / 1024:.1f}"
    except (ValueError, IndexError):
        return text


def cell_cpu(up, down):
    if not up and not down:
        return "n/a (not measured)"
    u, why = numbers(up)
    d, _ = numbers(down)
    if not u and not d:
        return why or "n/a (not measured)"
    f = lambda v: f"{statistics.median(v):.1f}" if v else "–"  # noqa: E731
    return f"{f(u)} / {f(d)}"


def per_gb(cpu, moved):
    """CPU seconds per 10^9 bytes of each run (the lines of the two files
    pair up), or the first reason a run has none."""
    vals, reason = [], ""
    for c, b in zip(cpu.splitlines(), moved.splitlines()):
        try:
            seconds, count = float(c.split()[0]), float(b.split()[0])
        except (ValueError, IndexError):
            reason = reason or (b if b.startswith("n/a") else c).strip()
            continue
        if count > 0:
            vals.append(seconds / (count / 1e9))
    return vals, reason


def cell_cpu_per_gb(cpu_up, bytes_up, cpu_down, bytes_down):
    u, why_u = per_gb(cpu_up, bytes_up)
    d, why_d = per_gb(cpu_down, bytes_down)
    if not u and not d:
        why = why_u or why_d or (cpu_up.splitlines() or [""])[0]
        return why if why.startswith("n/a") else "n/a (not measured)"
    f = lambda v: f"{statistics.median(v):.2f}" if v else "–"  # noqa: E731
    return f"{f(u)} / {f(d)}"


COLUMNS = [
    "row",
    "TCP up Gbit/s",
    "TCP down Gbit/s",
    "UDP Gbit/s",
    "4-flow Gbit/s",
    "ping ms",
    "setup ms",
    "RSS MiB",
    "CPU s",
    "engine CPU s per GB",
]


def table(root):
    rows = []
    notes = []
    for row in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        name = read(row, "name") or row.name
        status = read(row, "status")
        note = read(row, "note")
        if note:
            notes.append(f"{name}: {note}")
        if status and status != "ok" and not read(row, "up"):
            rows.append([name, status] + [""] * (len(COLUMNS) - 2))
            continue
        rows.append([
            name,
            median_range(read(row, "up")),
            median_range(read(row, "down")),
            cell_udp(read(row, "udp")),
            median_range(read(row, "p4")),
            cell_ping(read(row, "ping")),
            cell_setup(read(row, "setup")),
            cell_rss(read(row, "rss")),
            cell_cpu(read(row, "cpu_up"), read(row, "cpu_down")),
            cell_cpu_per_gb(
                read(row, "cpu_up"), read(row, "bytes_up"), read(row, "cpu_down"), read(row, "bytes_down")
            ),
        ])
        if status and status != "ok":
            notes.append(f"{name}: {status}")
    widths = [max(len(COLUMNS[i]), *(len(r[i]) for r in rows)) for i in range(len(COLUMNS))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(COLUMNS), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    if notes:
        out.append("")
        out += [f"- {n}" for n in notes]
    return "\n".join(out)


def main(argv):
    if len(argv) == 3 and argv[1] == "iperf":
        print(parse_iperf(argv[2]))
    elif len(argv) == 3 and argv[1] == "bytes":
        print(parse_bytes(argv[2]))
    elif len(argv) == 3 and argv[1] == "ping":
        print(parse_ping(argv[2]))
    elif len(argv) == 3 and argv[1] == "table":
        print(table(argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
