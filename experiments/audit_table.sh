#!/bin/sh
# The attack table of the README: gradient inversion (ORL faces), LiRA membership inference (heart disease) and the
# one-run ε audit, per protocol and ε. About 40 minutes on 2 idle CPU cores. Results: experiments/results/audit-*/
set -e
OUT=experiments/results
python -m secure_fl.cli audit audit-faces --attack inversion --iterations 300 --batch 2 --out $OUT/audit-faces
python -m secure_fl.cli audit audit-faces-dp --attack inversion --iterations 300 --batch 2 --out $OUT/audit-faces-dp
python -m secure_fl.cli audit audit-heart --attack membership --shadows 8 --budget-seconds 240 --out $OUT/audit-heart
python -m secure_fl.cli audit audit-heart --attack epsilon \
  --protocol "dp-sgd-local[target_epsilon=1.0]" --protocol "dp-sgd-local[target_epsilon=4.0]" \
  --protocol "dp-sgd-local[target_epsilon=8.0]" --protocol "dp-distributed-ckks[target_epsilon=1.0]" \
  --protocol "dp-distributed-ckks[target_epsilon=4.0]" --protocol "dp-distributed-ckks[target_epsilon=8.0]" \
  --protocol plain-fedavg --out $OUT/audit-heart
python experiments/audit_table.py
