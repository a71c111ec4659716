# SPDX-License-Identifier: MIT
# Sum amounts per region: summarize.py IN.csv OUT.csv
import csv
import sys

totals = {}
with open(sys.argv[1]) as f:
    for row in csv.DictReader(f):
        totals[row["region"]] = totals.get(row["region"], 0) + int(row["amount"])
with open(sys.argv[2], "w") as f:
    f.write("region,total\n")
    for region in sorted(totals):
        f.write(f"{region},{totals[region]}\n")
print(f"{len(totals)} regions")
