"""Writes Taylor's half-hourly electricity demand (England and Wales, Monday 5 June to Sunday
27 August 2000, 4032 values in megawatts; Taylor 2003) as a simulator trace: `time,demand` once a
minute, linearly between the half hours, the lowest value mapped to 1 instance capacity and the
highest to 8. The series is read from the pmdarima wheel on PyPI (pmdarima/datasets/taylor.py,
which ships it as a literal), with the standard library only.

usage: taylor.py WHEEL OUT.csv
"""

import ast
import sys
import zipfile

wheel, out = sys.argv[1], sys.argv[2]
source = zipfile.ZipFile(wheel).read("pmdarima/datasets/taylor.py").decode()
start = source.index("np.array([") + len("np.array(")
end = source.index("])", start) + 1
values = [float(v) for v in ast.literal_eval(source[start:end])]
if len(values) != 4032 or values[:3] != [22262.0, 21756.0, 22247.0]:
    sys.exit(f"{wheel}: the taylor series is not the one expected ({len(values)} values)")
low, high = min(values), max(values)
scale = lambda v: 1.0 + 7.0 * (v - low) / (high - low)
with open(out, "w") as f:
    f.write("# Taylor (2003): half-hourly electricity demand, England and Wales, 2000-06-05 to\n")
    f.write(f"# 2000-08-27 (pmdarima's load_taylor, from the R forecast package), {low:.0f}-{high:.0f} MW\n")
    f.write("# mapped to 1-8 instance capacities; once a minute, linear between the half hours\n")
    f.write("time,demand\n")
    for i in range(len(values) * 30):
        a = values[i // 30]
        b = values[min(i // 30 + 1, len(values) - 1)]
        v = a + (b - a) * (i % 30) / 30
        f.write(f"{i * 60},{scale(v):.4f}\n")
