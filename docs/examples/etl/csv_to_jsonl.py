"""One JSON line per CSV row, for `treadle add -`: the row's order_id is the item id."""

import csv
import json
import sys

with open(sys.argv[1], newline="") as fh:
    for row in csv.DictReader(fh):
        print(json.dumps({"id": row["order_id"], "data": row}))
