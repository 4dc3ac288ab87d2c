"""Time order_parameter.py in process, around run_experiment (imports excluded, as
benchmark/time_original.py excludes them for the original): process CPU and wall seconds into a
JSON file.   python benchmark/seed000_time_ours.py OUT.json [order_parameter.py arguments]"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import order_parameter as op  # noqa: E402

out, sys.argv = sys.argv[1], ["order_parameter.py", *sys.argv[2:]]
args = op.parse_args("order_parameter.py", op.Args, op.finalize_args)
c0, w0 = time.process_time(), time.time()
code = op.run_experiment("order_parameter.py", args, op.train, x_axis="episode")
with open(out, "w") as f:
    json.dump({"cpu_s": time.process_time() - c0, "sys_s": 0.0, "wall_s": time.time() - w0, "exit": code,
               "runs": args.num_members}, f)
