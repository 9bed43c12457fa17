"""Per-kernel table of an `ncu --page raw --csv --print-units base` export with the metrics
gpu__time_duration.sum, dram__bytes_read.sum, dram__bytes_write.sum and
sm__throughput.avg.pct_of_peak_sustained_elapsed (bench/gpu/profile_pipeline.sh writes one):
duration, DRAM bytes, the rate they moved at, SM throughput, and the total.

    python3 bench/gpu/ncu_table.py ncu_pipeline.csv
"""
import csv
import sys


def number(text):
    return float(text.replace(",", "")) if text else 0.0


def main(path):
    rows = list(csv.reader(open(path)))
    if len(rows) < 3:
        print("no kernels in", path)
        return
    head, total_ns = rows[0], 0.0
    print(f"{'kernel':46} {'us':>8} {'MB read':>8} {'MB writ':>8} {'GB/s':>6} {'sm %':>6}")
    for r in rows[2:]:  # rows[1] holds the units
        c = dict(zip(head, r))
        ns = number(c["gpu__time_duration.sum"])
        rd, wr = number(c.get("dram__bytes_read.sum", "")), number(c.get("dram__bytes_write.sum", ""))
        total_ns += ns
        name = c["Kernel Name"].replace("void ", "").split("(")[0]
        print(f"{name[:46]:46} {ns / 1e3:8.1f} {rd / 1e6:8.1f} {wr / 1e6:8.1f} {(rd + wr) / ns:6.0f} "
              f"{c['sm__throughput.avg.pct_of_peak_sustained_elapsed']:>6}")
    print(f"total {total_ns / 1e3:.1f} us")


if __name__ == "__main__":
    main(sys.argv[1])
